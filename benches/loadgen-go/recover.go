package main

// Recovery mode (-recover ROOM): after the usual ready line, each stdin command
//
//	round EPOCH OFFSET EXPECT
//
// connects COUNT fresh clients all at once; each authenticates, joins ROOM (asking to recover
// from EPOCH/OFFSET unless EPOCH is "-"), reads until its `joined` for ROOM, checks it, and
// disconnects. It answers one JSON line: how many clients passed the checks, the first
// failure, the time from the burst's start until the last client had everything, and the
// spread of the per-client times. The checks, per client: the history messages before
// `joined` carry exactly the offsets OFFSET+1 .. OFFSET+EXPECT, in order, each once;
// `joined` says recovered (true when EPOCH is given), the same epoch, and offset
// OFFSET+EXPECT. Without EPOCH only `joined` is checked (recovered false) and its epoch and
// offset are reported.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

type frameMsg struct {
	Event  string          `json:"event"`
	Room   string          `json:"room"`
	Offset *int64          `json:"offset"`
	Data   json.RawMessage `json:"data"`
}

type joinedData struct {
	Room      string `json:"room"`
	Epoch     string `json:"epoch"`
	Offset    int64  `json:"offset"`
	Recovered bool   `json:"recovered"`
}

type outcome struct {
	err       error
	connected float64 // seconds from the burst's start to `connected`
	done      float64 // seconds from the burst's start to the checked `joined`
	joined    joinedData
}

// readFrames calls f with each whole text frame's payload until f returns true.
func readFrames(conn net.Conn, carry []byte, f func([]byte) (bool, error)) error {
	buf := append([]byte(nil), carry...)
	tmp := make([]byte, 64*1024)
	for {
		for {
			fin, opcode, start, length, ok := parseHeader(buf)
			if !ok || len(buf) < start+length {
				break
			}
			payload := buf[start : start+length]
			buf = buf[start+length:]
			if opcode == 8 {
				return fmt.Errorf("closed: %q", payload)
			}
			if fin && opcode == 1 {
				stop, err := f(payload)
				if err != nil || stop {
					return err
				}
			}
		}
		n, err := conn.Read(tmp)
		if err != nil {
			return err
		}
		buf = append(buf, tmp[:n]...)
	}
}

func recoverOne(u *url.URL, token, room, epoch string, offset, expect int64, start time.Time) outcome {
	var out outcome
	conn, carry, err := dialConn(u, token, nil)
	if err != nil {
		out.err = err
		return out
	}
	defer conn.Close()
	out.connected = time.Since(start).Seconds()
	join := map[string]any{"rooms": []string{room}}
	if epoch != "-" {
		join["recover"] = map[string]any{room: map[string]any{"epoch": epoch, "offset": offset}}
	}
	body, _ := json.Marshal(map[string]any{"event": "join", "data": join})
	conn.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := conn.Write(maskedFrame(1, body)); err != nil {
		out.err = err
		return out
	}
	next := offset + 1
	err = readFrames(conn, carry, func(payload []byte) (bool, error) {
		var msg frameMsg
		if err := json.Unmarshal(payload, &msg); err != nil {
			return false, fmt.Errorf("bad frame %q: %w", payload, err)
		}
		if msg.Event == "joined" {
			var data joinedData
			if err := json.Unmarshal(msg.Data, &data); err != nil || data.Room != room {
				return false, nil // another room's
			}
			out.joined = data
			return true, nil
		}
		if msg.Offset == nil || msg.Room != room {
			return false, nil
		}
		if epoch == "-" {
			return false, nil // messages published while joining: not checked here
		}
		if *msg.Offset != next {
			return false, fmt.Errorf("offset %d where %d was due", *msg.Offset, next)
		}
		next++
		return false, nil
	})
	if err != nil {
		out.err = err
		return out
	}
	out.done = time.Since(start).Seconds()
	if epoch != "-" {
		j := out.joined
		switch {
		case !j.Recovered:
			out.err = fmt.Errorf("joined without recovered: %+v", j)
		case j.Epoch != epoch || j.Offset != offset+expect:
			out.err = fmt.Errorf("joined at %s/%d, expected %s/%d", j.Epoch, j.Offset, epoch, offset+expect)
		case next != offset+expect+1:
			out.err = fmt.Errorf("got offsets up to %d of %d", next-1, offset+expect)
		}
	}
	return out
}

func quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(float64(len(sorted))*q))]
}

func recoverRound(u *url.URL, count int, prefix, room, epoch string, offset, expect int64) map[string]any {
	start := time.Now()
	outcomes := make([]outcome, count)
	var wg sync.WaitGroup
	for i := 0; i < count; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			outcomes[i] = recoverOne(u, prefix+strconv.Itoa(i), room, epoch, offset, expect, start)
		}(i)
	}
	wg.Wait()
	ok := 0
	var firstErr any
	var done, connected, after []float64
	for _, o := range outcomes {
		if o.err != nil {
			if firstErr == nil {
				firstErr = o.err.Error()
			}
			continue
		}
		ok++
		done = append(done, o.done)
		connected = append(connected, o.connected)
		after = append(after, o.done-o.connected)
	}
	sort.Float64s(done)
	sort.Float64s(connected)
	sort.Float64s(after)
	report := map[string]any{
		"ok": ok, "failed": count - ok, "error": firstErr,
		"seconds": quantile(done, 1.0), "connected_max": quantile(connected, 1.0),
		"done_p50": quantile(done, 0.5), "after_connect_p50": quantile(after, 0.5),
		"after_connect_max": quantile(after, 1.0),
	}
	for _, o := range outcomes {
		if o.err == nil {
			report["epoch"] = o.joined.Epoch
			report["offset"] = o.joined.Offset
			break
		}
	}
	return report
}

func recoverMain(u *url.URL, count int, prefix, room string) {
	reply(map[string]any{"ready": count, "seconds": 0})
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		fields := strings.Fields(in.Text())
		if len(fields) == 0 || fields[0] == "quit" {
			return
		}
		if fields[0] != "round" || len(fields) != 4 {
			reply(map[string]any{"error": "usage: round EPOCH OFFSET EXPECT"})
			continue
		}
		offset, _ := strconv.ParseInt(fields[2], 10, 64)
		expect, _ := strconv.ParseInt(fields[3], 10, 64)
		reply(recoverRound(u, count, prefix, room, fields[1], offset, expect))
	}
}
