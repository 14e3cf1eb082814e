//! Unit tests of the roster, without sockets.

use super::*;

fn roster_with(n: usize) -> (Roster, Vec<u64>) {
    let r = Roster::default();
    let ids = (0..n).map(|i| r.register(format!("w{i}"), "cpu".into(), WorkerRole::Train, String::new()).unwrap()).collect();
    (r, ids)
}

#[test]
fn ids_are_never_reused_and_sync_is_by_step() {
    let (r, ids) = roster_with(2);
    let (a, b) = (ids[0], ids[1]);
    r.remove(a);
    let c = r.register("c".into(), "cpu".into(), WorkerRole::Train, String::new()).unwrap();
    assert!(c > b && b > a);
    for id in [b, c] {
        r.mark_ready(id).unwrap();
    }
    r.report_idle(b, 0, 0).unwrap();
    r.report_idle(c, 4, 0).unwrap();
    assert_eq!(r.in_sync(0), vec![b]);
    assert_eq!(r.in_sync(4), vec![c]);
    assert!(r.send(b, Work::Resync("x".into())));
    assert_eq!(r.in_sync(0), Vec::<u64>::new(), "a member with work is not idle");
    assert!(!r.send(a, Work::Resync("x".into())), "a removed member gets nothing");
}

#[test]
fn only_ready_members_get_work_and_unknown_ids_are_refused() {
    let (r, ids) = roster_with(1);
    assert_eq!(r.report_idle(ids[0], 0, 0).unwrap_err(), RosterError::NotReady(ids[0]));
    assert_eq!(r.report_idle(99, 0, 0).unwrap_err(), RosterError::Unknown(99));
    assert_eq!(r.touch(99), Err(RosterError::Unknown(99)));
    r.mark_ready(ids[0]).unwrap();
    assert!(r.report_idle(ids[0], 0, 0).is_ok());
}

#[test]
fn silent_members_are_reaped() {
    let (r, ids) = roster_with(2);
    r.lock().by_id.get_mut(&ids[0]).unwrap().last_seen = Instant::now() - Duration::from_secs(60);
    let gone: Vec<u64> = r.reap(Duration::from_secs(30)).iter().map(|m| m.id).collect();
    assert_eq!(gone, vec![ids[0]]);
    assert!(r.contains(ids[1]) && !r.contains(ids[0]));
    // A heartbeat keeps a member in.
    r.lock().by_id.get_mut(&ids[1]).unwrap().last_seen = Instant::now() - Duration::from_secs(60);
    r.touch(ids[1]).unwrap();
    assert!(r.reap(Duration::from_secs(30)).is_empty());
}

#[test]
fn out_of_sync_members_are_told_to_resync_and_eval_workers_never_train() {
    let (r, ids) = roster_with(2);
    let e = r.register("e".into(), "cpu".into(), WorkerRole::Eval, String::new()).unwrap();
    for id in ids.iter().chain([&e]) {
        r.mark_ready(*id).unwrap();
    }
    r.report_idle(ids[0], 3, 0).unwrap();
    r.report_idle(ids[1], 2, 0).unwrap();
    r.report_idle(e, 0, 0).unwrap();
    assert_eq!(r.resync_out_of_sync(3), vec![ids[1]]);
    assert_eq!(r.in_sync(3), vec![ids[0]]);
    assert!(r.in_sync(0).is_empty(), "an eval worker is never a step member");
    assert!(r.has_eval_worker());
    assert_eq!(r.idle_members(|role| role == WorkerRole::Eval), vec![e]);
    assert!(!r.send_if_idle(ids[1], Work::Resync("y".into()), |_| true), "busy members get no job task");
}

#[test]
fn checksums_are_read_once_except_the_kept_step() {
    let (r, ids) = roster_with(1);
    r.mark_ready(ids[0]).unwrap();
    r.report_idle(ids[0], 100, 7).unwrap();
    r.report_idle(ids[0], 200, 8).unwrap();
    assert_eq!(r.take_checksums(|s| s == 100 || s == 200, 200), vec![(ids[0], 100, 7), (ids[0], 200, 8)]);
    assert_eq!(r.take_checksums(|_| true, 200), vec![], "each report is read once");
    assert_eq!((r.checksum(ids[0], 100), r.checksum(ids[0], 200)), (None, Some(8)));
}

#[tokio::test]
async fn changes_wake_waiters() {
    let r = Arc::new(Roster::default());
    let wait = r.next_change();
    let id = r.register("a".into(), "cpu".into(), WorkerRole::Train, String::new()).unwrap();
    tokio::time::timeout(Duration::from_secs(1), wait).await.expect("registration wakes waiters");
    let wait = r.next_change();
    r.mark_ready(id).unwrap();
    tokio::time::timeout(Duration::from_secs(1), wait).await.expect("ready wakes waiters");
}

#[test]
fn a_full_roster_refuses_until_a_member_leaves() {
    let r = Roster::with_limit(2);
    let a = r.register("a".into(), "cpu".into(), WorkerRole::Train, String::new()).unwrap();
    r.register("b".into(), "cpu".into(), WorkerRole::Train, String::new()).unwrap();
    assert_eq!(r.register("c".into(), "cpu".into(), WorkerRole::Train, String::new()), Err(RosterError::Full(2)));
    r.remove(a);
    r.register("c".into(), "cpu".into(), WorkerRole::Train, String::new()).unwrap();
}

#[test]
fn a_ring_over_two_hosts_is_ordered_by_host() {
    let r = Roster::default();
    // Joined interleaved: host a, host b, host a, host b.
    let endpoints = ["10.0.0.1:9100", "10.0.0.2:9100", "10.0.0.1:9101", "10.0.0.2:9101"];
    let ids: Vec<u64> =
        endpoints.iter().map(|e| r.register(format!("w{e}"), "cpu".into(), WorkerRole::Train, e.to_string()).unwrap()).collect();
    assert_eq!(r.ring_order(&ids), vec![ids[0], ids[2], ids[1], ids[3]]);
    // One host (every test on loopback, in any spelling): join order, unchanged.
    let local = Roster::default();
    let same: Vec<u64> = ["127.0.0.1:9102", "[::1]:9101", "localhost:9100"]
        .iter()
        .map(|e| local.register(format!("w{e}"), "cpu".into(), WorkerRole::Train, e.to_string()).unwrap())
        .collect();
    assert_eq!(local.ring_order(&same), same);
}

#[test]
fn a_member_reporting_idle_with_work_queued_is_not_idle() {
    // The upload race: asked for its state while idle at step 4, then given
    // step 5; its report after the upload (still at 4) arrives before it
    // reads step 5 from its mailbox, and must not make it look idle at 4.
    let (r, ids) = roster_with(1);
    let id = ids[0];
    r.mark_ready(id).unwrap();
    r.report_idle(id, 4, 0).unwrap();
    assert!(r.send(id, Work::Resync("upload".into())));
    assert!(r.send(id, Work::Resync("step 5".into())));
    r.delivered(id);
    r.report_idle(id, 4, 0).unwrap();
    assert_eq!(r.in_sync(4), Vec::<u64>::new(), "step 5 is still queued");
    assert!(r.resync_out_of_sync(5).is_empty(), "a member with queued work is not told to resync");
    r.delivered(id);
    r.report_idle(id, 5, 0).unwrap();
    assert_eq!(r.in_sync(5), vec![id]);
}

#[test]
fn only_a_member_that_asked_for_work_can_send_a_joiner_its_state() {
    let (r, ids) = roster_with(2);
    let (a, b) = (ids[0], ids[1]);
    for id in [a, b] {
        r.mark_ready(id).unwrap();
    }
    // Both still loading their first state: neither can send the other one.
    assert!(!r.others_hold_state(a) && !r.others_hold_state(b));
    r.report_idle(a, 0, 0).unwrap();
    assert!(r.others_hold_state(b), "a holds a state b can take");
    assert!(!r.others_hold_state(a), "never from itself");
}
