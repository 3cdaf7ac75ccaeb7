//! History rooms on the fan-out path: offset order, the live messages held during a
//! recovery and released after it (the merge), and floors, through the hub's public API.

use roomcast_core::{Config, Exclude, Handle, Hub, Released, Sent};

fn hub() -> Hub<u32> {
    Hub::new(Config::default(), 0)
}

fn member(hub: &mut Hub<u32>, id: u32, room: &str) -> Handle {
    let h = hub.add(&format!("c{id}"), id, 0).unwrap();
    hub.authenticate(h, None, 0);
    hub.join(h, room);
    h
}

/// Flushes; the payloads each sink got, in order, as strings.
fn flush(hub: &mut Hub<u32>) -> Vec<(u32, Vec<String>)> {
    let mut out = Vec::new();
    hub.flush(|&sink, batch| {
        let got = batch
            .frames()
            .map(|f| String::from_utf8(f.text_payload().to_vec()).unwrap())
            .collect();
        out.push((sink, got));
    });
    out.sort();
    out
}

fn send(hub: &mut Hub<u32>, epoch: &str, offset: u64) -> usize {
    send_ex(hub, epoch, offset, &[])
}

fn send_ex(hub: &mut Hub<u32>, epoch: &str, offset: u64, exclude: &[&str]) -> usize {
    let payload = offset.to_string();
    let exclude = Exclude::new(exclude.iter().copied());
    hub.send_history("r", epoch, offset, payload.as_bytes(), &exclude, |_| {})
        .queued()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_room_delivers_in_offset_order_per_epoch() {
    let mut hub = hub();
    member(&mut hub, 1, "r");
    member(&mut hub, 2, "r");
    assert_eq!(send(&mut hub, "e", 1), 2);
    assert_eq!(send(&mut hub, "e", 2), 2);
    assert_eq!(send(&mut hub, "e", 4), 2); // a gap is not waited for
    assert_eq!(send(&mut hub, "e", 3), 0); // overtaken: would come after 4
    assert_eq!(send(&mut hub, "e", 4), 0); // a duplicate
    assert_eq!(send(&mut hub, "f", 1), 2); // a new epoch starts over
    let want = strings(&["1", "2", "4", "1"]);
    assert_eq!(flush(&mut hub), vec![(1, want.clone()), (2, want)]);
}

#[test]
fn a_room_without_members_or_a_plain_room_is_unaffected() {
    let mut hub = hub();
    assert_eq!(send(&mut hub, "e", 1), 0);
    let a = member(&mut hub, 1, "other");
    assert_eq!(send(&mut hub, "e", 2), 0);
    assert!(!hub.hold_history(a, "r", true));
    assert_eq!(
        hub.release_history(a, "r", "e", 0),
        Released::default(),
        "not a member"
    );
}

#[test]
fn live_messages_during_a_recovery_are_held_then_released_after_the_replay_once_in_order() {
    let mut hub = hub();
    let a = member(&mut hub, 1, "r");
    let b = member(&mut hub, 2, "r");
    assert_eq!(send(&mut hub, "e", 10), 2);
    flush(&mut hub);
    assert!(hub.hold_history(b, "r", true));
    assert_eq!(send(&mut hub, "e", 11), 1); // b's is held
    assert_eq!(send(&mut hub, "e", 13), 1);
    assert_eq!(send(&mut hub, "e", 12), 0); // overtaken by 13: to no one
    assert_eq!(hub.held_first(b, "r", None), Some(("e", 11)));
    assert_eq!(hub.held_first(a, "r", None), None);
    // The read came back at offset 11: the replay and `joined` first, then the rest.
    assert!(hub.send(b, b"replay-11"));
    assert!(hub.send(b, b"joined-11"));
    let released = hub.release_history(b, "r", "e", 11);
    assert_eq!(released.queued, 1);
    assert!(released.encrypted.is_empty());
    assert_eq!(
        flush(&mut hub),
        vec![
            (1, strings(&["11", "13"])),
            (2, strings(&["replay-11", "joined-11", "13"]))
        ]
    );
    // A late live copy of a message b already has is not sent to it again.
    assert_eq!(send(&mut hub, "e", 13), 0);
    assert_eq!(send(&mut hub, "e", 14), 2);
    assert_eq!(
        flush(&mut hub),
        vec![(1, strings(&["14"])), (2, strings(&["14"]))]
    );
}

#[test]
fn the_floor_skips_live_copies_up_to_the_joined_offset_and_ends_above_it() {
    let mut hub = hub();
    let a = member(&mut hub, 1, "r");
    hub.hold_history(a, "r", true);
    // The read got 1..=3 from the store before their live copies arrived.
    hub.release_history(a, "r", "e", 3);
    let other = member(&mut hub, 2, "r");
    assert_eq!(send(&mut hub, "e", 2), 1); // only the other member
    assert_eq!(send(&mut hub, "e", 3), 1);
    assert_eq!(send(&mut hub, "e", 4), 2);
    assert_eq!(send(&mut hub, "e", 5), 2);
    assert_eq!(
        flush(&mut hub),
        vec![
            (1, strings(&["4", "5"])),
            (2, strings(&["2", "3", "4", "5"]))
        ]
    );
    let _ = other;
}

#[test]
fn excluded_members_get_nothing_live_or_held() {
    let mut hub = hub();
    let a = member(&mut hub, 1, "r");
    member(&mut hub, 2, "r");
    hub.hold_history(a, "r", true);
    assert_eq!(send_ex(&mut hub, "e", 1, &["c1"]), 1);
    assert_eq!(send_ex(&mut hub, "e", 2, &["c2"]), 0);
    assert_eq!(hub.release_history(a, "r", "e", 0).queued, 1);
    assert_eq!(
        flush(&mut hub),
        vec![(1, strings(&["2"])), (2, strings(&["1"]))]
    );
}

#[test]
fn leaving_or_going_away_drops_what_was_held() {
    let mut hub = hub();
    let a = member(&mut hub, 1, "r");
    let b = member(&mut hub, 2, "r");
    hub.hold_history(a, "r", true);
    hub.hold_history(b, "r", true);
    send(&mut hub, "e", 1);
    hub.leave(a, "r");
    hub.remove(b);
    let c = member(&mut hub, 3, "r");
    hub.join(a, "r");
    assert_eq!(hub.held_first(a, "r", None), None);
    assert_eq!(hub.release_history(a, "r", "e", 0), Released::default());
    assert_eq!(send(&mut hub, "e", 2), 2);
    let _ = c;
    // A recovery given up (cancelled) stops holding.
    hub.hold_history(a, "r", true);
    send(&mut hub, "e", 3);
    assert!(hub.hold_history(a, "r", false));
    assert_eq!(hub.held_first(a, "r", None), None);
    assert_eq!(send(&mut hub, "e", 4), 2);
}

#[test]
fn an_encrypted_member_gets_its_held_messages_back_for_sealing() {
    let mut hub = hub();
    let a = member(&mut hub, 1, "r");
    member(&mut hub, 2, "r");
    hub.set_encrypted(a, true);
    let mut sealed = Vec::new();
    let none = Exclude::none();
    hub.send_history("r", "e", 1, b"1", &none, |&sink| sealed.push(sink));
    assert_eq!(sealed, vec![1]);
    hub.hold_history(a, "r", true);
    sealed.clear();
    hub.send_history("r", "e", 2, b"2", &none, |&sink| sealed.push(sink));
    hub.send_history("r", "e", 3, b"3", &none, |&sink| sealed.push(sink));
    assert!(sealed.is_empty(), "held, not sealed live");
    let released = hub.release_history(a, "r", "e", 1);
    assert_eq!(released.queued, 0);
    let payloads: Vec<&[u8]> = released
        .encrypted
        .iter()
        .map(|f| f.text_payload())
        .collect();
    assert_eq!(payloads, vec![&b"2"[..], &b"3"[..]]);
    assert_eq!(
        flush(&mut hub),
        vec![(2, strings(&["1", "2", "3"]))],
        "the plaintext member live"
    );
}

#[test]
fn an_unreadable_history_floors_whatever_the_epoch() {
    let mut hub = hub();
    let a = member(&mut hub, 1, "r");
    hub.hold_history(a, "r", true);
    send(&mut hub, "e", 7);
    send(&mut hub, "e", 8);
    let (epoch, first) = hub.held_first(a, "r", None).unwrap();
    assert_eq!((epoch, first), ("e", 7));
    assert_eq!(hub.release_history(a, "r", "", first - 1).queued, 2);
    assert_eq!(send(&mut hub, "e", 8), 0);
    assert_eq!(send(&mut hub, "e", 9), 1);
    assert_eq!(flush(&mut hub), vec![(1, strings(&["7", "8", "9"]))]);
}

#[test]
fn an_offset_gone_back_under_one_epoch_is_reported_not_delivered() {
    let mut hub = hub();
    member(&mut hub, 1, "r");
    for offset in 1..=20 {
        assert_eq!(send(&mut hub, "e", offset), 1);
    }
    flush(&mut hub);
    let none = Exclude::none();
    // The store lost 12..=20 and numbers a new message 12: seen with another payload.
    assert_eq!(
        hub.send_history("r", "e", 12, b"new 12", &none, |_| {}),
        Sent::RolledBack
    );
    // A copy of a recent message is only skipped.
    assert_eq!(
        hub.send_history("r", "e", 20, b"20", &none, |_| {}),
        Sent::Queued(0)
    );
    // Far below the newest: no late copy comes that late.
    assert_eq!(
        hub.send_history("r", "e", 3, b"3", &none, |_| {}),
        Sent::RolledBack
    );
    assert!(flush(&mut hub).is_empty());
    // The new epoch the caller starts is delivered from its first offset.
    assert_eq!(send(&mut hub, "f", 1), 1);
    assert_eq!(flush(&mut hub), vec![(1, strings(&["1"]))]);
}

#[test]
fn an_epoch_change_during_a_recovery_keeps_the_new_epochs_first_messages() {
    let mut hub = hub();
    let a = member(&mut hub, 1, "r");
    member(&mut hub, 2, "r");
    assert_eq!(send(&mut hub, "e", 50), 2);
    flush(&mut hub);
    hub.hold_history(a, "r", true);
    send(&mut hub, "e", 51);
    // Redis restarted without its data: a new epoch from offset 1.
    send(&mut hub, "f", 1);
    send(&mut hub, "f", 2);
    assert_eq!(hub.held_epoch(a, "r"), Some("f"));
    assert_eq!(hub.held_first(a, "r", None), Some(("e", 51)));
    assert_eq!(hub.held_first(a, "r", Some("f")), Some(("f", 1)));
    // The caller read again (the held epoch is not the one it read) and got f at 0.
    let released = hub.release_history(a, "r", "f", 0);
    assert_eq!(released.queued, 2);
    assert_eq!(
        flush(&mut hub),
        vec![(1, strings(&["1", "2"])), (2, strings(&["51", "1", "2"]))]
    );
    // Its floor is f's: a late copy of f 2 is skipped, f 3 goes to both.
    assert_eq!(send(&mut hub, "f", 3), 2);
}

#[test]
fn held_messages_are_taken_by_budget_in_order_then_released() {
    let mut hub = hub();
    let a = member(&mut hub, 1, "r");
    hub.hold_history(a, "r", true);
    for offset in 1..=6 {
        send(&mut hub, "e", offset);
    }
    assert_eq!(hub.held_bytes(a, "r"), 18);
    let first = hub.take_held(a, "r", "e", 2, 7);
    assert_eq!(
        first.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
        vec![3, 4]
    );
    // Still holding: a message arriving now waits its turn behind those.
    send(&mut hub, "e", 7);
    assert!(flush(&mut hub).is_empty());
    let rest = hub.take_held(a, "r", "e", 4, 100);
    assert_eq!(
        rest.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
        vec![5, 6, 7]
    );
    assert!(hub.take_held(a, "r", "e", 7, 100).is_empty());
    assert_eq!(hub.release_history(a, "r", "e", 7), Released::default());
    assert_eq!(send(&mut hub, "e", 7), 0);
    assert_eq!(send(&mut hub, "e", 8), 1);
}

#[test]
fn many_recovering_members_each_hold_and_release_their_own() {
    let mut hub = hub();
    let members: Vec<Handle> = (0..2000).map(|i| member(&mut hub, i, "r")).collect();
    for &h in members.iter().step_by(2) {
        hub.hold_history(h, "r", true);
    }
    assert_eq!(send(&mut hub, "e", 1), 1000);
    assert_eq!(send(&mut hub, "e", 2), 1000);
    for &h in members.iter().step_by(2) {
        assert_eq!(hub.release_history(h, "r", "e", 1).queued, 1);
    }
    let got = flush(&mut hub);
    assert_eq!(got.len(), 2000);
    assert!(got.iter().all(|(sink, frames)| if sink % 2 == 0 {
        frames == &strings(&["2"])
    } else {
        frames == &strings(&["1", "2"])
    }));
    assert_eq!(send(&mut hub, "e", 3), 2000);
}
