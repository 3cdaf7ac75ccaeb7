//! Behaviour of the hub through its public API, with an injected clock.

use roomcast_core::frame::text_frame;
use roomcast_core::{Config, Exclude, Expiry, Frame, Handle, Hub, InterestKind, TICK_MS};

fn hub() -> Hub<u32> {
    Hub::new(Config::default(), 0)
}

fn hub_with(config: Config) -> Hub<u32> {
    Hub::new(config, 0)
}

/// Adds an authenticated connection whose sink and client id are `id`.
fn authed(hub: &mut Hub<u32>, id: u32, now: u64) -> Handle {
    let h = hub.add(&format!("c{id}"), id, now).unwrap();
    hub.authenticate(h, None, now);
    h
}

/// Flushes and returns (sink, bytes written, frames in the batch) per connection.
fn flush(hub: &mut Hub<u32>) -> Vec<(u32, Vec<u8>, usize)> {
    let mut out = Vec::new();
    hub.flush(|&sink, batch| {
        let bytes: Vec<u8> = batch.frames().flat_map(|f| f.as_bytes().to_vec()).collect();
        assert_eq!(bytes.len(), batch.byte_len());
        out.push((sink, bytes, batch.len()));
    });
    out
}

fn sweep(hub: &mut Hub<u32>, now: u64) -> Vec<(u32, Expiry)> {
    let mut out = Vec::new();
    hub.sweep(now, |&sink, reason| out.push((sink, reason)));
    out
}

fn sorted<'a>(it: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut v: Vec<String> = it.map(str::to_owned).collect();
    v.sort();
    v
}

// -- registry -------------------------------------------------------------------------

#[test]
fn removed_handle_is_dead_even_after_slot_reuse() {
    let mut hub = hub();
    let a = hub.add("a", 1, 0).unwrap();
    assert_eq!(hub.remove(a), Some(1));
    let b = hub.add("b", 2, 0).unwrap();
    assert_ne!(a, b);
    assert!(!hub.contains(a) && hub.contains(b));
    assert_eq!(hub.remove(a), None);
    assert!(!hub.send(a, b"x"));
    assert!(!hub.join(a, "r"));
    assert_eq!(hub.len(), 1);
}

#[test]
fn unknown_handles_are_no_ops() {
    let mut hub = hub();
    let h = Handle::from_raw(u64::MAX);
    hub.touch(h, 5);
    hub.authenticate(h, Some("u"), 5);
    hub.set_backpressured(h, true);
    assert!(!hub.is_backpressured(h));
    assert_eq!(hub.skipped(h), 0);
    assert_eq!(hub.last_activity(h), None);
    assert_eq!(hub.rooms_of(h).count(), 0);
    assert_eq!(hub.stats().connections, 0);
}

#[test]
fn stats_count_connections_rooms_and_users() {
    let mut hub = hub();
    let a = hub.add("a", 1, 0).unwrap();
    let b = hub.add("b", 2, 0).unwrap();
    hub.authenticate(a, Some("u"), 0);
    hub.join(a, "r1");
    hub.join(b, "r1");
    hub.join(b, "r2");
    let s = hub.stats();
    assert_eq!(
        (
            s.connections,
            s.authenticated,
            s.rooms,
            s.users,
            s.memberships
        ),
        (2, 1, 2, 1, 3)
    );
    hub.remove(a);
    hub.remove(b);
    let s = hub.stats();
    assert_eq!(
        (
            s.connections,
            s.authenticated,
            s.rooms,
            s.users,
            s.memberships
        ),
        (0, 0, 0, 0, 0)
    );
}

// -- rooms and users ------------------------------------------------------------------

#[test]
fn join_and_leave_report_changes_and_delete_empty_rooms() {
    let mut hub = hub();
    let a = hub.add("a", 1, 0).unwrap();
    assert!(hub.join(a, "r"));
    assert!(!hub.join(a, "r"));
    assert!(hub.in_room(a, "r") && hub.has_room("r"));
    assert!(hub.join(a, "s"));
    assert_eq!(hub.room_count(a), 2);
    assert!(hub.leave(a, "s"));
    assert_eq!(hub.room_count(a), 1);
    assert!(hub.leave(a, "r"));
    assert!(!hub.leave(a, "r"));
    assert!(!hub.has_room("r"));
    assert!(!hub.leave(a, "nope"));
}

#[test]
fn room_members_include_unauthenticated_connections() {
    let mut hub = hub();
    let a = hub.add("a", 1, 0).unwrap();
    let b = authed(&mut hub, 2, 0);
    hub.join(a, "r");
    hub.join(b, "r");
    assert_eq!(sorted(hub.room_members("r")), ["a", "c2"]);
    assert_eq!(sorted(hub.rooms_of(a)), ["r"]);
    assert_eq!(sorted(hub.room_names()), ["r"]);
}

#[test]
fn remove_leaves_every_room_and_the_user_index() {
    let mut hub = hub();
    let a = hub.add("a", 1, 0).unwrap();
    let b = hub.add("b", 2, 0).unwrap();
    hub.authenticate(a, Some("u"), 0);
    hub.authenticate(b, Some("u"), 0);
    for r in ["x", "y"] {
        hub.join(a, r);
    }
    hub.join(b, "y");
    hub.remove(a);
    assert!(!hub.has_room("x"));
    assert_eq!(sorted(hub.room_members("y")), ["b"]);
    assert_eq!(sorted(hub.user_members("u")), ["b"]);
    hub.remove(b);
    assert_eq!(hub.user_members("u").count(), 0);
    assert_eq!(hub.stats().users, 0);
}

#[test]
fn reauthenticating_moves_the_user_index() {
    let mut hub = hub();
    let a = hub.add("a", 1, 0).unwrap();
    hub.authenticate(a, Some("u"), 0);
    hub.authenticate(a, Some("v"), 0);
    assert_eq!(hub.user_members("u").count(), 0);
    assert_eq!(sorted(hub.user_members("v")), ["a"]);
    hub.authenticate(a, None, 0);
    assert_eq!(hub.stats().users, 0);
    assert_eq!(hub.stats().authenticated, 1);
}

#[test]
fn membership_survives_random_join_leave_and_remove() {
    // A model check of the swap-remove bookkeeping.
    use std::collections::{BTreeSet, HashMap};
    let mut hub = hub();
    let mut model: HashMap<u32, BTreeSet<String>> = HashMap::new();
    let mut handles: HashMap<u32, Handle> = HashMap::new();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rand = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut next_id = 0;
    for _ in 0..20_000 {
        match rand(10) {
            0 => {
                let h = authed(&mut hub, next_id, 0);
                hub.authenticate(h, Some(&format!("u{}", next_id % 7)), 0);
                handles.insert(next_id, h);
                model.insert(next_id, BTreeSet::new());
                next_id += 1;
            }
            1 if !handles.is_empty() => {
                let id = *handles
                    .keys()
                    .nth(rand(handles.len() as u64) as usize)
                    .unwrap();
                hub.remove(handles.remove(&id).unwrap());
                model.remove(&id);
            }
            n if !handles.is_empty() => {
                let id = *handles
                    .keys()
                    .nth(rand(handles.len() as u64) as usize)
                    .unwrap();
                let room = format!("r{}", rand(12));
                if n < 6 {
                    assert_eq!(
                        hub.join(handles[&id], &room),
                        model.get_mut(&id).unwrap().insert(room)
                    );
                } else {
                    assert_eq!(
                        hub.leave(handles[&id], &room),
                        model.get_mut(&id).unwrap().remove(&room)
                    );
                }
            }
            _ => {}
        }
    }
    for (id, rooms) in &model {
        let got: BTreeSet<String> = hub.rooms_of(handles[id]).map(str::to_owned).collect();
        assert_eq!(&got, rooms);
    }
    for r in 0..12 {
        let room = format!("r{r}");
        let mut expected: Vec<String> = model
            .iter()
            .filter(|(_, rooms)| rooms.contains(&room))
            .map(|(id, _)| format!("c{id}"))
            .collect();
        expected.sort();
        assert_eq!(sorted(hub.room_members(&room)), expected);
        assert_eq!(hub.has_room(&room), !expected.is_empty());
        // Fan-out reaches exactly the members.
        assert_eq!(hub.send_room(&room, b"m", &Exclude::none()), expected.len());
    }
    for u in 0..7 {
        let expected = model.keys().filter(|id| *id % 7 == u).count();
        assert_eq!(hub.user_members(&format!("u{u}")).count(), expected);
    }
}

// -- delivery -------------------------------------------------------------------------

#[test]
fn room_fan_out_frames_once_and_shares_the_frame() {
    let mut hub = hub();
    let hs: Vec<Handle> = (0..3).map(|i| authed(&mut hub, i, 0)).collect();
    for &h in &hs {
        hub.join(h, "r");
    }
    assert_eq!(hub.send_room("r", b"hello", &Exclude::none()), 3);
    let mut first: Option<Frame> = None;
    let mut shared = 0;
    hub.flush(|_, batch| {
        let frame = batch.single().expect("one frame").clone();
        if let Some(f) = &first {
            shared += usize::from(f.same(&frame));
        } else {
            first = Some(frame);
        }
    });
    assert_eq!(shared, 2);
    assert_eq!(first.unwrap().as_bytes(), &text_frame(b"hello")[..]);
}

#[test]
fn fan_out_skips_unauthenticated_encrypted_and_excluded() {
    let mut hub = hub();
    let plain = authed(&mut hub, 1, 0);
    let enc = authed(&mut hub, 2, 0);
    let excluded = authed(&mut hub, 3, 0);
    let anon = hub.add("c4", 4, 0).unwrap();
    hub.set_encrypted(enc, true);
    for h in [plain, enc, excluded, anon] {
        hub.join(h, "r");
    }
    let ex = Exclude::new(["c3"]);
    assert_eq!(hub.send_room("r", b"m", &ex), 1);
    assert_eq!(hub.broadcast(b"m", &ex), 1);
    let sinks: Vec<u32> = flush(&mut hub)
        .into_iter()
        .map(|(s, _, n)| {
            assert_eq!(n, 2);
            s
        })
        .collect();
    assert_eq!(sinks, [1]);
}

#[test]
fn send_reaches_any_connection_state() {
    let mut hub = hub();
    let anon = hub.add("a", 1, 0).unwrap();
    hub.set_encrypted(anon, true);
    assert!(hub.send(anon, b"err"));
    assert_eq!(flush(&mut hub), vec![(1, text_frame(b"err"), 1)]);
}

#[test]
fn send_user_reaches_every_session() {
    let mut hub = hub();
    let a = authed(&mut hub, 1, 0);
    let b = authed(&mut hub, 2, 0);
    let c = authed(&mut hub, 3, 0);
    hub.authenticate(a, Some("u"), 0);
    hub.authenticate(b, Some("u"), 0);
    hub.authenticate(c, Some("v"), 0);
    assert_eq!(hub.send_user("u", b"m"), 2);
    assert_eq!(hub.send_user("nobody", b"m"), 0);
    let mut sinks: Vec<u32> = flush(&mut hub).into_iter().map(|(s, _, _)| s).collect();
    sinks.sort();
    assert_eq!(sinks, [1, 2]);
}

#[test]
fn encrypted_sinks_filter_by_room_user_and_exclude() {
    let mut hub = hub();
    let hs: Vec<Handle> = (1..=4).map(|i| authed(&mut hub, i, 0)).collect();
    for &h in &hs[..3] {
        hub.set_encrypted(h, true);
    }
    hub.authenticate(hs[0], Some("u"), 0);
    hub.authenticate(hs[1], Some("u"), 0);
    hub.join(hs[0], "r");
    hub.join(hs[2], "r");
    hub.join(hs[3], "r");
    let collect = |hub: &Hub<u32>, room, user, ex: &Exclude<'_>| {
        let mut v = Vec::new();
        hub.encrypted_sinks(room, user, ex, |&s| v.push(s));
        v.sort();
        v
    };
    let none = Exclude::none();
    assert_eq!(collect(&hub, Some("r"), None, &none), [1, 3]);
    assert_eq!(collect(&hub, None, Some("u"), &none), [1, 2]);
    assert_eq!(collect(&hub, Some("r"), Some("u"), &none), [1]);
    assert_eq!(collect(&hub, None, None, &none), [1, 2, 3]);
    assert_eq!(collect(&hub, None, None, &Exclude::new(["c2"])), [1, 3]);
    assert_eq!(
        collect(&hub, Some("missing"), None, &none),
        Vec::<u32>::new()
    );
}

#[test]
fn frames_coalesce_into_one_batch_per_flush() {
    let mut hub = hub();
    let a = authed(&mut hub, 1, 0);
    hub.join(a, "r");
    assert!(!hub.take_flush_request());
    hub.send_room("r", b"one", &Exclude::none());
    assert!(hub.take_flush_request());
    hub.send_room("r", b"two", &Exclude::none());
    hub.send(a, b"three");
    assert!(!hub.take_flush_request(), "one flush request per flush");
    let mut expected = text_frame(b"one");
    expected.extend(text_frame(b"two"));
    expected.extend(text_frame(b"three"));
    assert_eq!(flush(&mut hub), vec![(1, expected, 3)]);
    assert_eq!(hub.stats().pending_bytes, 0);
    assert!(flush(&mut hub).is_empty());
    hub.send(a, b"again");
    assert!(hub.take_flush_request());
}

#[test]
fn cancelled_flush_is_requested_again() {
    let mut hub = hub();
    let a = authed(&mut hub, 1, 0);
    hub.send(a, b"x");
    assert!(hub.take_flush_request());
    hub.cancel_flush();
    hub.send(a, b"y");
    assert!(hub.take_flush_request());
}

#[test]
fn flush_one_writes_only_that_connection() {
    let mut hub = hub();
    let a = authed(&mut hub, 1, 0);
    let b = authed(&mut hub, 2, 0);
    hub.broadcast(b"m", &Exclude::none());
    let mut got = Vec::new();
    hub.flush_one(a, |&s, batch| got.push((s, batch.len())));
    assert_eq!(got, [(1, 1)]);
    assert_eq!(hub.pending_bytes(a), 0);
    assert_eq!(hub.pending_bytes(b), text_frame(b"m").len());
    let sinks: Vec<u32> = flush(&mut hub).into_iter().map(|(s, _, _)| s).collect();
    assert_eq!(sinks, [2]);
}

#[test]
fn removed_connection_drops_pending_and_slot_reuse_is_clean() {
    let mut hub = hub();
    let a = authed(&mut hub, 1, 0);
    hub.send(a, b"old");
    hub.remove(a);
    assert_eq!(hub.stats().pending_bytes, 0);
    let b = authed(&mut hub, 2, 0);
    hub.send(b, b"new");
    assert_eq!(flush(&mut hub), vec![(2, text_frame(b"new"), 1)]);
}

// -- backpressure ---------------------------------------------------------------------

#[test]
fn backpressured_connection_skips_and_counts() {
    let mut hub = hub();
    let a = authed(&mut hub, 1, 0);
    let b = authed(&mut hub, 2, 0);
    hub.set_backpressured(a, true);
    assert!(hub.is_backpressured(a));
    assert_eq!(hub.broadcast(b"m", &Exclude::none()), 1);
    assert!(!hub.send(a, b"m"));
    assert_eq!(hub.skipped(a), 2);
    assert_eq!(hub.skipped(b), 0);
    assert_eq!(hub.stats().skipped, 2);
    hub.set_backpressured(a, false);
    assert!(hub.send(a, b"m"));
    assert!(
        !hub.has_overflowed(),
        "overflow is only reported with close_on_backpressure_limit"
    );
}

#[test]
fn pending_bytes_past_the_limit_skip() {
    let frame_len = text_frame(&[0; 10]).len();
    let mut hub = hub_with(Config {
        backpressure_limit: 2 * frame_len,
        ..Config::default()
    });
    let a = authed(&mut hub, 1, 0);
    assert!(hub.send(a, &[0; 10]));
    assert!(hub.send(a, &[0; 10]));
    assert!(!hub.send(a, &[0; 10]));
    assert_eq!(hub.skipped(a), 1);
    assert!(
        !hub.is_backpressured(a),
        "the flag mirrors set_backpressured only"
    );
    flush(&mut hub);
    assert!(hub.send(a, &[0; 10]));
}

#[test]
fn overflow_is_reported_once_per_connection() {
    let mut hub = hub_with(Config {
        backpressure_limit: 8,
        close_on_backpressure_limit: true,
        ..Config::default()
    });
    let a = authed(&mut hub, 1, 0);
    let b = authed(&mut hub, 2, 0);
    hub.set_backpressured(b, true);
    assert_eq!(hub.broadcast(&[0; 20], &Exclude::none()), 0);
    assert_eq!(hub.broadcast(&[0; 20], &Exclude::none()), 0);
    let mut got = Vec::new();
    hub.drain_overflowed(|&s| got.push(s));
    got.sort();
    assert_eq!(got, [1, 2]);
    hub.send(a, &[0; 20]);
    assert!(!hub.has_overflowed());
}

// -- deadlines ------------------------------------------------------------------------

#[test]
fn auth_deadline_expires_within_one_tick() {
    let mut hub = hub();
    let a = hub.add("a", 1, 0).unwrap();
    hub.set_auth_deadline(a, Some(1_005), 0);
    assert!(sweep(&mut hub, 1_004).is_empty());
    let at = (1_005..1_005 + TICK_MS + 1)
        .find(|&now| !sweep(&mut hub, now).is_empty())
        .expect("reported");
    assert!(at < 1_005 + TICK_MS, "reported at {at}");
    assert!(sweep(&mut hub, 100_000).is_empty(), "reported once");
}

#[test]
fn cleared_auth_deadline_never_fires() {
    let mut hub = hub();
    let a = hub.add("a", 1, 0).unwrap();
    hub.set_auth_deadline(a, Some(100), 0);
    hub.set_auth_deadline(a, None, 10);
    assert!(sweep(&mut hub, 1_000).is_empty());
    assert_eq!(hub.stats().wheel_entries, 0);
}

#[test]
fn authenticate_clears_auth_and_arms_heartbeat() {
    let mut hub = hub_with(Config {
        heartbeat_timeout_ms: 5_000,
        ..Config::default()
    });
    let a = hub.add("a", 1, 0).unwrap();
    hub.set_auth_deadline(a, Some(1_000), 0);
    hub.authenticate(a, None, 500);
    assert!(sweep(&mut hub, 5_499).is_empty());
    assert_eq!(sweep(&mut hub, 5_500), [(1, Expiry::Heartbeat)]);
}

#[test]
fn touch_postpones_heartbeat_lazily() {
    let mut hub = hub_with(Config {
        heartbeat_timeout_ms: 1_000,
        ..Config::default()
    });
    let a = authed(&mut hub, 1, 0);
    let entries = hub.stats().wheel_entries;
    for now in (100..3_000).step_by(100) {
        hub.touch(a, now);
        assert_eq!(hub.stats().wheel_entries, entries, "touch never inserts");
        assert!(sweep(&mut hub, now).is_empty());
    }
    assert!(sweep(&mut hub, 3_899).is_empty());
    assert_eq!(sweep(&mut hub, 3_900), [(1, Expiry::Heartbeat)]);
    assert_eq!(hub.last_activity(a), Some(2_900));
}

#[test]
fn pong_keeps_idle_away_but_not_heartbeat() {
    let mut hub = hub_with(Config {
        heartbeat_timeout_ms: 3_000,
        idle_timeout_ms: 1_000,
        ..Config::default()
    });
    let a = authed(&mut hub, 1, 0);
    for now in (500..3_000).step_by(500) {
        hub.touch_recv(a, now);
        assert!(sweep(&mut hub, now).is_empty());
    }
    assert_eq!(hub.last_activity(a), Some(0));
    assert_eq!(sweep(&mut hub, 3_000), [(1, Expiry::Heartbeat)]);
}

#[test]
fn idle_applies_to_unauthenticated_connections() {
    let mut hub = hub_with(Config {
        idle_timeout_ms: 1_000,
        ..Config::default()
    });
    hub.add("a", 1, 0).unwrap();
    assert!(sweep(&mut hub, 999).is_empty());
    assert_eq!(sweep(&mut hub, 1_000), [(1, Expiry::Idle)]);
}

#[test]
fn auth_outranks_heartbeat_outranks_idle() {
    let mut hub = hub_with(Config {
        heartbeat_timeout_ms: 1_000,
        idle_timeout_ms: 1_000,
        ..Config::default()
    });
    let a = hub.add("a", 1, 0).unwrap();
    let b = authed(&mut hub, 2, 0);
    hub.add("c", 3, 0).unwrap();
    hub.set_auth_deadline(a, Some(1_000), 0);
    let _ = b;
    let mut got = sweep(&mut hub, 5_000);
    got.sort_by_key(|&(s, _)| s);
    assert_eq!(
        got,
        [(1, Expiry::Auth), (2, Expiry::Heartbeat), (3, Expiry::Idle)]
    );
}

#[test]
fn removed_connection_is_never_reported() {
    let mut hub = hub_with(Config {
        idle_timeout_ms: 1_000,
        ..Config::default()
    });
    let a = hub.add("a", 1, 0).unwrap();
    hub.remove(a);
    hub.add("b", 2, 500).unwrap();
    assert!(sweep(&mut hub, 1_200).is_empty());
    assert_eq!(sweep(&mut hub, 1_500), [(2, Expiry::Idle)]);
}

#[test]
fn pings_go_out_at_half_idle_once_per_receive() {
    let mut hub = hub_with(Config {
        idle_timeout_ms: 1_000,
        send_pings: true,
        backpressure_limit: 0,
        ..Config::default()
    });
    let a = authed(&mut hub, 1, 0);
    hub.set_backpressured(a, true);
    assert!(sweep(&mut hub, 499).is_empty());
    assert!(!hub.take_flush_request());
    assert!(sweep(&mut hub, 500).is_empty());
    assert!(hub.take_flush_request(), "ping needs a flush");
    assert_eq!(flush(&mut hub), vec![(1, vec![0x89, 0], 1)]);
    assert!(sweep(&mut hub, 900).is_empty());
    assert!(flush(&mut hub).is_empty(), "one ping per receive");
    hub.touch_recv(a, 950);
    assert!(sweep(&mut hub, 1_449).is_empty());
    assert!(flush(&mut hub).is_empty());
    sweep(&mut hub, 1_450);
    assert_eq!(flush(&mut hub).len(), 1);
    assert_eq!(sweep(&mut hub, 1_950), [(1, Expiry::Idle)]);
}

#[test]
fn every_connection_has_at_most_one_live_entry() {
    let mut hub = hub_with(Config {
        heartbeat_timeout_ms: 60_000,
        idle_timeout_ms: 120_000,
        ..Config::default()
    });
    for i in 0..100 {
        let h = hub.add(&format!("c{i}"), i, 0).unwrap();
        hub.set_auth_deadline(h, Some(5_000), 0);
        hub.authenticate(h, None, 10);
        hub.touch(h, 20);
    }
    // Each connection went: idle entry, earlier auth entry, then heartbeat (later than
    // auth: no new entry). Stale entries are dropped as they fire.
    assert_eq!(hub.stats().wheel_entries, 200);
    sweep(&mut hub, 5_000);
    assert_eq!(hub.stats().wheel_entries, 100 + 100);
    sweep(&mut hub, 60_020);
    assert_eq!(
        hub.stats().wheel_entries,
        100,
        "stale idle entries remain until due"
    );
}

#[test]
fn sweep_work_does_not_grow_with_idle_connections() {
    // Deadlines far away cost nothing per sweep, however many connections hold them.
    fn sweep_work(idle: u32) -> (u64, usize) {
        let mut hub = hub_with(Config {
            heartbeat_timeout_ms: 3_600_000,
            idle_timeout_ms: 7_200_000,
            ..Config::default()
        });
        for i in 0..idle {
            let h = hub.add(&format!("idle{i}"), i, 0).unwrap();
            hub.authenticate(h, None, 0);
        }
        for i in 0..5 {
            let h = hub.add(&format!("soon{i}"), 1_000_000 + i, 0).unwrap();
            hub.set_auth_deadline(h, Some(1_000 + 100 * u64::from(i)), 0);
        }
        let before = hub.wheel_visits();
        let mut expired = 0;
        // Ten seconds of sweeps every tick, crossing several level-0 rotations.
        for now in (0..=10_000).step_by(TICK_MS as usize) {
            expired += sweep(&mut hub, now).len();
        }
        (hub.wheel_visits() - before, expired)
    }
    let small = sweep_work(10);
    let large = sweep_work(50_000);
    assert_eq!(small.1, 5);
    assert_eq!(
        large, small,
        "sweep work must not depend on idle connections"
    );
}

#[test]
fn long_gaps_between_sweeps_still_report_everything() {
    let mut hub = hub_with(Config {
        idle_timeout_ms: 1_000,
        ..Config::default()
    });
    for i in 0..1_000u32 {
        hub.add(&format!("c{i}"), i, u64::from(i) * 37).unwrap();
    }
    let mut got: Vec<u32> = Vec::new();
    for now in [0, 5_000, 20_000, 40_000, 100_000] {
        got.extend(sweep(&mut hub, now).into_iter().map(|(s, _)| s));
    }
    got.sort();
    assert_eq!(got, (0..1_000).collect::<Vec<_>>());
}

// -- interest -------------------------------------------------------------------------

fn tracking() -> Hub<u32> {
    hub_with(Config {
        track_interest: true,
        ..Config::default()
    })
}

fn drain_interest(hub: &mut Hub<u32>) -> Vec<(InterestKind, String, bool)> {
    let mut out = Vec::new();
    hub.drain_interest(|kind, name, present| out.push((kind, name.to_owned(), present)));
    out
}

#[test]
fn interest_is_not_recorded_unless_tracking_is_on() {
    let mut hub = hub();
    let a = hub.add("a", 1, 0).unwrap();
    hub.authenticate(a, Some("u"), 0);
    hub.join(a, "r");
    hub.remove(a);
    assert!(!hub.take_interest_request());
    assert_eq!(hub.pending_interest(), 0);
}

#[test]
fn interest_reports_first_and_last_member_of_rooms_users_and_clients() {
    use InterestKind::{Client, Room, User};
    let mut hub = tracking();
    let a = hub.add("a", 1, 0).unwrap();
    let b = hub.add("b", 2, 0).unwrap();
    assert!(
        !hub.take_interest_request(),
        "unauthenticated connections are no interest"
    );
    hub.authenticate(a, Some("u"), 0);
    hub.authenticate(b, Some("u"), 0);
    hub.join(a, "r");
    hub.join(b, "r");
    assert!(hub.take_interest_request());
    assert!(!hub.take_interest_request(), "one request until drained");
    assert_eq!(
        drain_interest(&mut hub),
        vec![
            (Client, "a".into(), true),
            (User, "u".into(), true),
            (Client, "b".into(), true),
            (Room, "r".into(), true),
        ]
    );
    hub.leave(a, "r");
    assert!(!hub.take_interest_request(), "b still holds r");
    hub.remove(a);
    assert_eq!(
        drain_interest(&mut hub),
        vec![(Client, "a".into(), false)],
        "b still holds r and u"
    );
    hub.remove(b);
    assert!(hub.take_interest_request());
    let mut last = drain_interest(&mut hub);
    last.sort_by(|x, y| x.1.cmp(&y.1));
    assert_eq!(
        last,
        vec![
            (Client, "b".into(), false),
            (Room, "r".into(), false),
            (User, "u".into(), false)
        ]
    );
}

#[test]
fn interest_keeps_churn_in_order_so_the_last_change_wins() {
    let mut hub = tracking();
    let a = authed(&mut hub, 1, 0);
    drain_interest(&mut hub);
    hub.join(a, "r");
    hub.leave(a, "r");
    hub.join(a, "r");
    let changes: Vec<bool> = drain_interest(&mut hub).into_iter().map(|c| c.2).collect();
    assert_eq!(changes, vec![true, false, true]);
    assert!(hub.has_room("r"));
}

#[test]
fn interest_follows_a_user_change_on_reauthentication() {
    use InterestKind::User;
    let mut hub = tracking();
    let a = hub.add("a", 1, 0).unwrap();
    hub.authenticate(a, Some("u"), 0);
    drain_interest(&mut hub);
    hub.authenticate(a, Some("v"), 0);
    assert_eq!(
        drain_interest(&mut hub),
        vec![(User, "u".into(), false), (User, "v".into(), true)]
    );
}

#[test]
fn a_cancelled_interest_request_is_made_again_on_the_next_change() {
    let mut hub = tracking();
    let a = authed(&mut hub, 1, 0);
    assert!(hub.take_interest_request());
    hub.cancel_interest();
    hub.join(a, "r");
    assert!(hub.take_interest_request());
    assert_eq!(hub.pending_interest(), 2);
}

#[test]
fn stats_count_deliveries_frames_and_bytes_out() {
    let mut hub = hub();
    let a = authed(&mut hub, 1, 0);
    let b = authed(&mut hub, 2, 0);
    hub.join(a, "r");
    hub.join(b, "r");
    assert_eq!(hub.send_room("r", b"hello", &Exclude::none()), 2);
    assert!(hub.send(a, b"x"));
    let s = hub.stats();
    assert_eq!((s.delivered, s.frames_out, s.bytes_out), (3, 0, 0));
    let written: usize = flush(&mut hub)
        .iter()
        .map(|(_, bytes, _)| bytes.len())
        .sum();
    let s = hub.stats();
    assert_eq!(s.delivered, 3);
    assert_eq!(s.frames_out, 3);
    assert_eq!(s.bytes_out, written as u64);
    assert_eq!(
        written,
        2 * text_frame(b"hello").len() + text_frame(b"x").len()
    );
}

#[test]
fn stats_count_backpressured_connections_once_each() {
    let mut hub = hub();
    let a = authed(&mut hub, 1, 0);
    let b = authed(&mut hub, 2, 0);
    hub.set_backpressured(a, true);
    hub.set_backpressured(a, true);
    hub.set_backpressured(b, true);
    assert_eq!(hub.stats().backpressured, 2);
    hub.set_backpressured(b, false);
    assert_eq!(hub.stats().backpressured, 1);
    assert!(!hub.send(a, b"x"));
    assert_eq!(hub.stats().delivered, 0);
    hub.remove(a);
    assert_eq!(hub.stats().backpressured, 0);
}
