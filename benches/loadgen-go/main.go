// Command loadgen is the compiled load generator of roomcast's benches: many WebSocket
// clients in one process, read by a single epoll loop into one large buffer, so that a
// delivery costs the load generator far less than it costs the server.
//
//	loadgen [-token-prefix P] [-sources K] [-source-first F] [-poll-ms MS] [-heartbeat S] URL COUNT
//
// It connects COUNT clients (source addresses spread over 127.0.0.10 .. 127.0.0.(9+K) when
// K > 1, or over 127.0.0.F .. 127.0.0.(F+K-1) when F > 0), authenticates each with {"event":"authenticate","data":{"type":"Bearer","token":
// P<i>}} and waits for its `connected`, prints {"ready": n, "seconds": s}, then answers one
// JSON line per stdin command, the same protocol as benches/loadgen.py:
//
//	count                          {"received","min","max","closed","bad","last"}
//	latency                        {"samples","p50","p99"} since the last `latency`
//	join R1,R2,...                 client i joins R[i % n]
//	publish N RATE SIZE ROOMS      client 0 sends N `publish` events (RATE/s, 0 = at once)
//	rpublish HOST:PORT CH N RATE SIZE
//	                               PUBLISHes N broadcast envelopes on Redis channel CH
//	rroom HOST:PORT ROOMS N RATE SIZE SHA
//	                               N room envelopes, round-robin over ROOMS, as an emitter
//	                               writes them: PUBLISHed on ws:room:<room> (SHA "-"), or
//	                               through the history script (EVALSHA SHA: numbered, kept,
//	                               published; see python/roomcast/broker/redis/history.py),
//	                               or PUBLISHed already numbered as the script would (SHA
//	                               "=": offsets counted here per room, epoch "numbered")
//	cpu                            {"cpu": seconds of CPU this process used}
//	silent K                       K clients, evenly spread, stop sending heartbeats (they
//	                               still answer pings, as a browser does)
//	closes T                       the silent clients' closes: {"silent","closed","codes",
//	                               "late_min","late_p50","late_p99","late_max","late_over_1s"},
//	                               lateness after (last heartbeat sent
//	                               + T seconds); "others_closed" counts the rest
//	quit
//
// Every message it sends carries "i" (a sequence number, increasing across commands) and
// "t" (CLOCK_MONOTONIC seconds, the clock of Python's perf_counter). A client that sees an
// "i" not above the last one it saw counts it as `bad` (a duplicate or a reordering), so
// count == expected per client and bad == 0 prove every client got every message exactly
// once. Latency is timed on the messages of every 100th client (from "t"), which a reader
// thread of their own reads as soon as anything arrives (with -poll-ms, the main loop reads
// every other client between pauses: the pause and its pass over thousands of sockets are
// the load generator's delay, not the server's, and stay out of the latencies). With -heartbeat S,
// every client sends {"event":"heartbeat"} every S seconds, the clients spread evenly over
// the period; `count` then also reports the pings received.
//
// With -recover ROOM it measures recovery instead (recover.go): each `round` command
// connects COUNT fresh clients at once, each joins ROOM asking to recover from a position,
// checks what it gets, and disconnects.
package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

// sampleEvery: latency is timed on clients whose index is a multiple of this.
const sampleEvery = 100

// monoBase and wallBase tie Go's monotonic clock to CLOCK_MONOTONIC.
var monoBase float64
var wallBase time.Time

func initClock() {
	var ts syscall.Timespec
	wallBase = time.Now()
	// CLOCK_MONOTONIC = 1
	syscall.Syscall(syscall.SYS_CLOCK_GETTIME, 1, uintptr(unsafe.Pointer(&ts)), 0)
	monoBase = float64(ts.Sec) + float64(ts.Nsec)/1e9
}

// mono is CLOCK_MONOTONIC in seconds (what Python's time.perf_counter returns on Linux).
func mono() float64 {
	return monoBase + time.Since(wallBase).Seconds()
}

type client struct {
	index    int
	fd       int
	carry    []byte // an incomplete frame left from the last read
	received int64
	lastI    int64
	bad      int64
	closed   bool
	sampled  bool
	inFrag   bool
	silent   bool
	lastBeat float64 // when it last sent a heartbeat (or authenticated)
	closedAt float64 // when a close frame arrived
	code     int     // the close frame's status code
	pings    int64
	iAt      int // where "i": was in its last message (a server frames every one alike)
}

type state struct {
	mu        sync.Mutex // the main loop's clients (every one not sampled), clients, byFd, last
	clients   []*client
	byFd      map[int]*client
	last      float64
	epfd      int
	smu       sync.Mutex // the sampled clients', sampledFd, latencies, slast
	sampledFd map[int]*client
	latencies []float64
	slast     float64
	sepfd     int
}

// lock takes both locks (commands that look at every client).
func (st *state) lock() {
	st.mu.Lock()
	st.smu.Lock()
}

func (st *state) unlock() {
	st.smu.Unlock()
	st.mu.Unlock()
}

// -- connecting ------------------------------------------------------------------------------

func wsKey() string {
	var b [16]byte
	rand.Read(b[:])
	return base64.StdEncoding.EncodeToString(b[:])
}

// maskedFrame builds a client (masked) frame of `opcode` carrying `payload`.
func maskedFrame(opcode byte, payload []byte) []byte {
	n := len(payload)
	out := make([]byte, 0, n+14)
	out = append(out, 0x80|opcode)
	switch {
	case n < 126:
		out = append(out, 0x80|byte(n))
	case n < 65536:
		out = append(out, 0x80|126, byte(n>>8), byte(n))
	default:
		out = append(out, 0x80|127)
		for s := 56; s >= 0; s -= 8 {
			out = append(out, byte(uint64(n)>>uint(s)))
		}
	}
	var mask [4]byte
	rand.Read(mask[:])
	out = append(out, mask[:]...)
	start := len(out)
	out = append(out, payload...)
	for i := range payload {
		out[start+i] ^= mask[i&3]
	}
	return out
}

// parseHeader returns (fin, opcode, payload start, payload length) of the frame at the start
// of b, or ok=false when b does not hold the whole header yet.
func parseHeader(b []byte) (fin bool, opcode byte, start int, length int, ok bool) {
	if len(b) < 2 {
		return
	}
	fin = b[0]&0x80 != 0
	opcode = b[0] & 0x0f
	masked := b[1]&0x80 != 0
	l := int(b[1] & 0x7f)
	start = 2
	switch l {
	case 126:
		if len(b) < 4 {
			return
		}
		l = int(b[2])<<8 | int(b[3])
		start = 4
	case 127:
		if len(b) < 10 {
			return
		}
		l = 0
		for i := 2; i < 10; i++ {
			l = l<<8 | int(b[i])
		}
		start = 10
	}
	if masked {
		start += 4 // servers do not mask; tolerate it anyway (payload left masked)
	}
	return fin, opcode, start, l, true
}

// dial connects, upgrades and authenticates one client; returns its fd (a dup, owned by the
// caller, non-blocking) and any bytes that arrived after `connected`.
func dial(u *url.URL, token string, source net.IP) (int, []byte, error) {
	conn, carry, err := dialConn(u, token, source)
	if err != nil {
		return -1, nil, err
	}
	defer conn.Close()
	fd, err := detach(conn)
	return fd, carry, err
}

// dialConn connects, upgrades and authenticates one client; returns the connection (no
// deadline set) and any bytes that arrived after `connected`.
func dialConn(u *url.URL, token string, source net.IP) (net.Conn, []byte, error) {
	dialer := net.Dialer{Timeout: 30 * time.Second}
	if source != nil {
		dialer.LocalAddr = &net.TCPAddr{IP: source}
	}
	conn, err := dialer.Dial("tcp", u.Host)
	if err != nil {
		return nil, nil, err
	}
	carry, err := upgrade(conn, u, token)
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	conn.SetDeadline(time.Time{})
	return conn, carry, nil
}

func upgrade(conn net.Conn, u *url.URL, token string) ([]byte, error) {
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	request := "GET " + u.RequestURI() + " HTTP/1.1\r\nHost: " + u.Host +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + wsKey() +
		"\r\nSec-WebSocket-Version: 13\r\n\r\n"
	auth, _ := json.Marshal(map[string]any{
		"event": "authenticate",
		"data":  map[string]string{"type": "Bearer", "token": token},
	})
	if _, err := conn.Write([]byte(request)); err != nil {
		return nil, err
	}
	buf := make([]byte, 0, 4096)
	tmp := make([]byte, 4096)
	upgraded := false
	for {
		n, err := conn.Read(tmp)
		if err != nil {
			return nil, fmt.Errorf("reading handshake: %w", err)
		}
		buf = append(buf, tmp[:n]...)
		if !upgraded {
			end := bytes.Index(buf, []byte("\r\n\r\n"))
			if end < 0 {
				continue
			}
			if !bytes.HasPrefix(buf, []byte("HTTP/1.1 101")) {
				return nil, fmt.Errorf("upgrade refused: %q", firstLine(buf))
			}
			buf = buf[end+4:]
			upgraded = true
			if _, err := conn.Write(maskedFrame(1, auth)); err != nil {
				return nil, err
			}
		}
		// Look for the `connected` text frame.
		for {
			fin, opcode, start, length, ok := parseHeader(buf)
			if !ok || len(buf) < start+length {
				break
			}
			payload := buf[start : start+length]
			buf = buf[start+length:]
			if opcode == 8 {
				return nil, fmt.Errorf("closed during authentication: %q", payload)
			}
			if fin && opcode == 1 && bytes.Contains(payload, []byte(`"event":"connected"`)) {
				return append([]byte(nil), buf...), nil
			}
		}
	}
}

func firstLine(b []byte) string {
	if i := bytes.IndexByte(b, '\r'); i >= 0 {
		return string(b[:i])
	}
	return string(b)
}

// detach duplicates the connection's socket (the copy stays open when conn is closed).
func detach(conn net.Conn) (int, error) {
	raw, err := conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var dupErr error
	raw.Control(func(f uintptr) {
		fd, dupErr = syscall.Dup(int(f))
	})
	if dupErr != nil {
		return -1, dupErr
	}
	syscall.CloseOnExec(fd)
	if err := syscall.SetNonblock(fd, true); err != nil {
		return -1, err
	}
	return fd, nil
}

func connectAll(u *url.URL, count int, prefix string, sources, first int, st *state) error {
	type result struct {
		c     *client
		carry []byte
		err   error
	}
	results := make(chan result, count)
	sem := make(chan struct{}, 200)
	perSource := (count + sources - 1) / sources
	for i := 0; i < count; i++ {
		var source net.IP
		if first > 0 {
			source = net.IPv4(127, 0, 0, byte(first+i/perSource))
		} else if sources > 1 {
			source = net.IPv4(127, 0, 0, byte(10+i/perSource))
		}
		sem <- struct{}{}
		go func(i int, source net.IP) {
			defer func() { <-sem }()
			fd, carry, err := dial(u, prefix+strconv.Itoa(i), source)
			if err != nil {
				results <- result{err: fmt.Errorf("client %d: %w", i, err)}
				return
			}
			results <- result{c: &client{index: i, fd: fd, lastI: -1, sampled: i%sampleEvery == 0,
				lastBeat: mono()}, carry: carry}
		}(i, source)
	}
	var firstErr error
	for n := 0; n < count; n++ {
		r := <-results
		if r.err != nil {
			if firstErr == nil {
				firstErr = r.err
			}
			continue
		}
		st.lock()
		st.clients = append(st.clients, r.c)
		epfd := st.epfd
		if r.c.sampled {
			st.sampledFd[r.c.fd] = r.c
			epfd = st.sepfd
		} else {
			st.byFd[r.c.fd] = r.c
		}
		if len(r.carry) > 0 {
			st.consume(r.c, r.carry, mono())
		}
		st.unlock()
		ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP, Fd: int32(r.c.fd)}
		if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, r.c.fd, &ev); err != nil {
			return err
		}
	}
	sort.Slice(st.clients, func(a, b int) bool { return st.clients[a].index < st.clients[b].index })
	return firstErr
}

// -- reading -----------------------------------------------------------------------------------

// consume parses every whole frame in data for c (under st.mu, or st.smu for a sampled
// client); an incomplete tail is kept.
func (st *state) consume(c *client, data []byte, now float64) {
	if len(c.carry) > 0 {
		c.carry = append(c.carry, data...)
		data = c.carry
	}
	for {
		fin, opcode, start, length, ok := parseHeader(data)
		if !ok || len(data) < start+length {
			break
		}
		payload := data[start : start+length]
		data = data[start+length:]
		switch opcode {
		case 1, 2, 0:
			if !fin {
				c.inFrag = true
				continue
			}
			c.inFrag = false
			c.received++
			st.check(c, payload, now)
		case 8:
			if !c.closed {
				c.closedAt = now
				if len(payload) >= 2 {
					c.code = int(payload[0])<<8 | int(payload[1])
				}
			}
			c.closed = true
		case 9:
			c.pings++
			writeAll(c.fd, maskedFrame(10, payload))
		}
	}
	if len(data) == 0 {
		c.carry = nil
	} else {
		c.carry = append([]byte(nil), data...)
	}
}

var keyI = []byte(`"i":`)
var keyT = []byte(`"t":`)

// number parses the JSON number after key in payload.
func number(payload, key []byte) (float64, bool) {
	at := bytes.Index(payload, key)
	if at < 0 {
		return 0, false
	}
	rest := payload[at+len(key):]
	end := 0
	for end < len(rest) && (rest[end] == '.' || rest[end] == '-' || rest[end] == 'e' ||
		rest[end] == 'E' || rest[end] == '+' || (rest[end] >= '0' && rest[end] <= '9')) {
		end++
	}
	v, err := strconv.ParseFloat(string(rest[:end]), 64)
	return v, err == nil
}

func (st *state) check(c *client, payload []byte, now float64) {
	at := c.iAt
	if at+len(keyI) > len(payload) || !bytes.Equal(payload[at:at+len(keyI)], keyI) {
		at = bytes.Index(payload, keyI) // the first frame, or a frame framed otherwise
		c.iAt = max(at, 0)
	}
	if at >= 0 {
		var i int64
		for _, ch := range payload[at+len(keyI):] {
			if ch < '0' || ch > '9' {
				break
			}
			i = i*10 + int64(ch-'0')
		}
		if i <= c.lastI {
			c.bad++
		}
		c.lastI = i
	}
	if c.sampled {
		if t, ok := number(payload, keyT); ok {
			st.latencies = append(st.latencies, now-t)
		}
	}
}

// readLoop reads every ready client into one buffer. With pollEvery > 0 it waits that long
// between passes, so that each read takes whatever arrived meanwhile (many frames per read
// syscall at high rates, at the cost of up to pollEvery of added latency).
func (st *state) readLoop(pollEvery time.Duration) {
	runtime.LockOSThread()
	buf := make([]byte, 1<<20)
	events := make([]syscall.EpollEvent, 4096)
	full := false // the last pass had more ready clients than `events` holds
	for {
		if pollEvery > 0 && !full {
			time.Sleep(pollEvery)
		}
		n, err := syscall.EpollWait(st.epfd, events, 100)
		full = n == len(events)
		if err != nil {
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			panic(err)
		}
		if n <= 0 {
			continue
		}
		now := mono()
		st.mu.Lock()
		any := false
		for _, ev := range events[:n] {
			c := st.byFd[int(ev.Fd)]
			if c == nil {
				continue
			}
			if st.drain(c, buf, st.epfd, now) > 0 {
				any = true
			}
		}
		if any {
			st.last = mono()
		}
		st.mu.Unlock()
	}
}

// drain reads what client c has until the socket is empty, timing its messages at `now`
// (0: at each read, for the sampled clients); on EOF or an error c is closed and leaves epfd.
// It returns the time of the last read that brought a message, or 0.
func (st *state) drain(c *client, buf []byte, epfd int, now float64) float64 {
	last := 0.0
	for {
		m, err := syscall.Read(c.fd, buf)
		if m > 0 {
			at := now
			if at == 0 {
				at = mono()
			}
			before := c.received
			st.consume(c, buf[:m], at)
			if c.received != before {
				last = at
			}
		}
		if m == len(buf) {
			continue
		}
		if m == 0 || (err != nil && err != syscall.EAGAIN && err != syscall.EINTR) {
			c.closed = true
			syscall.EpollCtl(epfd, syscall.EPOLL_CTL_DEL, c.fd, nil)
		}
		return last
	}
}

// sampledLoop reads the sampled clients as soon as anything arrives, each read timed on its
// own (they are 1 % of the clients).
func (st *state) sampledLoop() {
	runtime.LockOSThread()
	buf := make([]byte, 1<<16)
	events := make([]syscall.EpollEvent, 256)
	for {
		n, err := syscall.EpollWait(st.sepfd, events, 100)
		if err != nil {
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			panic(err)
		}
		st.smu.Lock()
		for _, ev := range events[:max(n, 0)] {
			c := st.sampledFd[int(ev.Fd)]
			if c == nil {
				continue
			}
			if last := st.drain(c, buf, st.sepfd, 0); last > 0 {
				st.slast = last
			}
		}
		st.smu.Unlock()
	}
}

// -- writing -----------------------------------------------------------------------------------

// writeAll writes b to a non-blocking fd, waiting for room when the socket is full.
func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := syscall.Write(fd, b)
		if n > 0 {
			b = b[n:]
		}
		if err == syscall.EAGAIN {
			pfd := []pollFd{{fd: int32(fd), events: 4 /* POLLOUT */}}
			poll(pfd, 100)
			continue
		}
		if err != nil && err != syscall.EINTR {
			return err
		}
	}
	return nil
}

type pollFd struct {
	fd      int32
	events  int16
	revents int16
}

func poll(fds []pollFd, timeoutMs int) {
	syscall.Syscall(syscall.SYS_POLL, uintptr(unsafe.Pointer(&fds[0])), uintptr(len(fds)), uintptr(timeoutMs))
}

// seq numbers every message this process sends (strictly increasing).
var seq int64

// paced calls send(k) for k in [0, n) at `rate` per second (0: at once), in batches of
// what is due every millisecond.
func paced(n int, rate float64, send func(from, to int)) {
	if rate <= 0 {
		for from := 0; from < n; from += 256 {
			send(from, min(n, from+256))
		}
		return
	}
	start := time.Now()
	done := 0
	for done < n {
		due := min(n, int(time.Since(start).Seconds()*rate)+1)
		if due > done {
			send(done, due)
			done = due
		}
		if done < n {
			next := start.Add(time.Duration(float64(done) / rate * float64(time.Second)))
			if d := time.Until(next); d > 0 {
				time.Sleep(d)
			}
		}
	}
}

func publishWS(st *state, n int, rate float64, size int, rooms string) error {
	c := st.clients[0]
	pad := strings.Repeat("x", size)
	var targets []string
	if rooms != "-" {
		targets = strings.Split(rooms, ",")
	}
	var firstErr error
	paced(n, rate, func(from, to int) {
		var out []byte
		for k := from; k < to; k++ {
			seq++
			body := `{"event":"publish","data":{"i":` + strconv.FormatInt(seq, 10) +
				`,"t":` + strconv.FormatFloat(mono(), 'f', 9, 64) + `,"pad":"` + pad + `"`
			if targets != nil {
				body += `,"room":"` + targets[k%len(targets)] + `"`
			}
			body += "}}"
			out = append(out, maskedFrame(1, []byte(body))...)
		}
		if err := writeAll(c.fd, out); err != nil && firstErr == nil {
			firstErr = err
		}
	})
	return firstErr
}

var redisConns = map[string]net.Conn{}

// numbered: the last offset given per room by `rroom ... =`.
var numbered = map[string]int64{}

func publishRedis(addr, channel string, n int, rate float64, size int) error {
	conn := redisConns[addr]
	if conn == nil {
		var err error
		conn, err = net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		redisConns[addr] = conn
		go io.Copy(io.Discard, conn) // the replies (subscriber counts)
	}
	pad := strings.Repeat("x", size)
	var firstErr error
	paced(n, rate, func(from, to int) {
		var out []byte
		for k := from; k < to; k++ {
			seq++
			body := `{"serverId":"emitter","type":"broadcast","event":"bench","data":{"i":` +
				strconv.FormatInt(seq, 10) + `,"t":` + strconv.FormatFloat(mono(), 'f', 9, 64) +
				`,"pad":"` + pad + `"}}`
			out = fmt.Appendf(out, "*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n",
				len(channel), channel, len(body), body)
		}
		if _, err := conn.Write(out); err != nil && firstErr == nil {
			firstErr = err
		}
	})
	return firstErr
}

// publishRoom sends n room envelopes round-robin over rooms, as the emitter writes them:
// PUBLISHed on ws:room:<room> when sha is "-", else through the history script (EVALSHA sha
// with the room's stream and meta keys), which numbers, keeps and publishes each one.
func publishRoom(addr string, rooms []string, n int, rate float64, size int, sha string) error {
	conn := redisConns[addr]
	if conn == nil {
		var err error
		conn, err = net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		redisConns[addr] = conn
		go io.Copy(io.Discard, conn) // the replies
	}
	pad := strings.Repeat("x", size)
	bulk := func(out []byte, s string) []byte {
		return fmt.Appendf(out, "$%d\r\n%s\r\n", len(s), s)
	}
	var firstErr error
	paced(n, rate, func(from, to int) {
		var out []byte
		for k := from; k < to; k++ {
			seq++
			room := rooms[k%len(rooms)]
			body := `{"serverId":"emitter","type":"room","target":"` + room +
				`","event":"bench","data":{"i":` + strconv.FormatInt(seq, 10) + `,"t":` +
				strconv.FormatFloat(mono(), 'f', 9, 64) + `,"pad":"` + pad + `"}}`
			channel := "ws:room:" + room
			if sha == "=" {
				// As the history script publishes it (numbered), without the script: the
				// server's side of a history message, arriving as fast as a plain one.
				numbered[room]++
				body = body[:len(body)-1] + `,"offset":` + strconv.FormatInt(numbered[room], 10) +
					`,"epoch":"numbered"}`
			}
			if sha == "-" || sha == "=" {
				out = append(out, "*3\r\n$7\r\nPUBLISH\r\n"...)
				out = bulk(out, channel)
				out = bulk(out, body)
				continue
			}
			// KEYS: stream, meta. ARGV: maxlen, ttl ms, new epoch, channel, envelope
			// without its closing brace.
			out = append(out, "*10\r\n$7\r\nEVALSHA\r\n"...)
			out = bulk(out, sha)
			out = bulk(out, "2")
			out = bulk(out, "ws:history:{r:"+room+"}:s")
			out = bulk(out, "ws:history:{r:"+room+"}:m")
			out = bulk(out, "100")
			out = bulk(out, "300000")
			out = bulk(out, fmt.Sprintf("%08x", uint32(seq)))
			out = bulk(out, channel)
			out = bulk(out, body[:len(body)-1])
		}
		if _, err := conn.Write(out); err != nil && firstErr == nil {
			firstErr = err
		}
	})
	return firstErr
}

// heartbeats sends every client that is not silent a heartbeat every `every`, in slots of
// 100 ms: client i in slot i % slots.
func (st *state) heartbeats(every time.Duration) {
	const tick = 100 * time.Millisecond
	slots := max(1, int(every/tick))
	frame := maskedFrame(1, []byte(`{"event":"heartbeat"}`))
	ticker := time.NewTicker(tick)
	for k := 0; ; k++ {
		<-ticker.C
		st.lock()
		now := mono()
		for _, c := range st.clients {
			if c.index%slots == k%slots && !c.silent && !c.closed {
				writeAll(c.fd, frame)
				c.lastBeat = now
			}
		}
		st.unlock()
	}
}

func (st *state) closes(timeout float64) map[string]any {
	st.lock()
	defer st.unlock()
	var late []float64
	codes := map[string]int{}
	silent, others := 0, 0
	for _, c := range st.clients {
		if !c.silent {
			if c.closed {
				others++
			}
			continue
		}
		silent++
		if c.closed {
			codes[strconv.Itoa(c.code)]++
			late = append(late, c.closedAt-(c.lastBeat+timeout))
		}
	}
	out := map[string]any{"silent": silent, "closed": len(late), "codes": codes,
		"others_closed": others}
	if len(late) > 0 {
		sort.Float64s(late)
		out["late_min"] = late[0]
		out["late_p50"] = late[len(late)/2]
		out["late_p99"] = late[min(len(late)-1, len(late)*99/100)]
		out["late_max"] = late[len(late)-1]
		over := 0
		for _, l := range late {
			if l > 1.0 {
				over++
			}
		}
		out["late_over_1s"] = over
	}
	return out
}

// -- commands ----------------------------------------------------------------------------------

func cpuSeconds() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

func reply(v any) {
	b, _ := json.Marshal(v)
	os.Stdout.Write(append(b, '\n'))
}

func main() {
	prefix := flag.String("token-prefix", "user:u", "token of client i: PREFIX<i>")
	sources := flag.Int("sources", 1, "spread clients over this many 127.0.0.x source addresses")
	pollMs := flag.Float64("poll-ms", 0, "wait this long between read passes (0: read at once)")
	recoverRoom := flag.String("recover", "", "measure recovery on this room (see recover.go)")
	first := flag.Int("source-first", 0, "bind clients to 127.0.0.F onwards (0: see -sources)")
	beat := flag.Float64("heartbeat", 0, "seconds between each client's heartbeats (0: none)")
	flag.Parse()
	if flag.NArg() != 2 {
		fmt.Fprintln(os.Stderr, "usage: loadgen URL COUNT [-token-prefix P] [-sources K]")
		os.Exit(2)
	}
	u, err := url.Parse(flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	count, err := strconv.Atoi(flag.Arg(1))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	initClock()
	if *recoverRoom != "" {
		recoverMain(u, count, *prefix, *recoverRoom)
		return
	}
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	sepfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// Two threads even when pinned to one CPU: the kernel, not Go's scheduler, decides when
	// the sampled reader runs (it wakes up ahead of the main loop's long passes).
	runtime.GOMAXPROCS(max(2, runtime.GOMAXPROCS(0)))
	st := &state{byFd: map[int]*client{}, epfd: epfd, sampledFd: map[int]*client{}, sepfd: sepfd}
	go st.readLoop(time.Duration(*pollMs * float64(time.Millisecond)))
	go st.sampledLoop()
	started := time.Now()
	if err := connectAll(u, count, *prefix, max(1, *sources), *first, st); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
	}
	st.mu.Lock()
	ready := len(st.clients)
	st.mu.Unlock()
	reply(map[string]any{"ready": ready, "seconds": time.Since(started).Seconds()})
	if *beat > 0 {
		go st.heartbeats(time.Duration(*beat * float64(time.Second)))
	}

	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		fields := strings.Fields(in.Text())
		if len(fields) == 0 || fields[0] == "quit" {
			break
		}
		switch fields[0] {
		case "count":
			st.lock()
			var total, bad, closed, pings int64
			lo, hi := int64(-1), int64(0)
			for _, c := range st.clients {
				total += c.received
				bad += c.bad
				pings += c.pings
				if c.closed {
					closed++
				}
				if lo < 0 || c.received < lo {
					lo = c.received
				}
				hi = max(hi, c.received)
			}
			last := max(st.last, st.slast)
			st.unlock()
			reply(map[string]any{"received": total, "min": max(lo, 0), "max": hi,
				"closed": closed, "bad": bad, "last": last, "pings": pings})
		case "latency":
			st.smu.Lock()
			samples := st.latencies
			st.latencies = nil
			st.smu.Unlock()
			sort.Float64s(samples)
			out := map[string]any{"samples": len(samples)}
			if len(samples) > 0 {
				out["p50"] = samples[len(samples)/2]
				out["p99"] = samples[min(len(samples)-1, len(samples)*99/100)]
			}
			reply(out)
		case "join":
			rooms := strings.Split(fields[1], ",")
			var firstErr error
			for _, c := range st.clients {
				body, _ := json.Marshal(map[string]any{"event": "join",
					"data": map[string]any{"rooms": []string{rooms[c.index%len(rooms)]}}})
				if err := writeAll(c.fd, maskedFrame(1, body)); err != nil && firstErr == nil {
					firstErr = err
				}
			}
			reply(map[string]any{"joined": len(st.clients), "error": errString(firstErr)})
		case "publish":
			n, _ := strconv.Atoi(fields[1])
			rate, _ := strconv.ParseFloat(fields[2], 64)
			size, _ := strconv.Atoi(fields[3])
			err := publishWS(st, n, rate, size, fields[4])
			reply(map[string]any{"sent": n, "error": errString(err)})
		case "rpublish":
			n, _ := strconv.Atoi(fields[3])
			rate, _ := strconv.ParseFloat(fields[4], 64)
			size, _ := strconv.Atoi(fields[5])
			err := publishRedis(fields[1], fields[2], n, rate, size)
			reply(map[string]any{"sent": n, "error": errString(err)})
		case "rroom":
			n, _ := strconv.Atoi(fields[3])
			rate, _ := strconv.ParseFloat(fields[4], 64)
			size, _ := strconv.Atoi(fields[5])
			err := publishRoom(fields[1], strings.Split(fields[2], ","), n, rate, size, fields[6])
			reply(map[string]any{"sent": n, "error": errString(err)})
		case "cpu":
			reply(map[string]any{"cpu": cpuSeconds()})
		case "silent":
			k, _ := strconv.Atoi(fields[1])
			st.lock()
			n := len(st.clients)
			marked := 0
			for j := 0; j < k && j < n; j++ {
				c := st.clients[j*n/k]
				if !c.silent {
					c.silent = true
					marked++
				}
			}
			st.unlock()
			reply(map[string]any{"silent": marked})
		case "closes":
			timeout, _ := strconv.ParseFloat(fields[1], 64)
			reply(st.closes(timeout))
		default:
			reply(map[string]any{"error": "unknown command: " + fields[0]})
		}
	}
	for _, c := range st.clients {
		syscall.Close(c.fd)
	}
}

func errString(err error) any {
	if err == nil {
		return nil
	}
	return err.Error()
}
