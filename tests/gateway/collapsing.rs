//! Concurrent misses for one task become one upstream call, whoever asks and whoever leaves.

use std::time::Duration;

use futures_util::future::join_all;

use crate::support::*;

#[tokio::test]
async fn a_hundred_concurrent_fetches_of_one_id_cause_exactly_one_upstream_call() {
    let (sim, gw) = start("").await;
    sim.create_task(KEY_A, "hot", "IN_PROGRESS");
    let hold = sim.hold();

    let gw = std::sync::Arc::new(gw);
    let clients: Vec<_> = (0..100)
        .map(|_| {
            let gw = std::sync::Arc::clone(&gw);
            tokio::spawn(async move { fetch(&gw, "hot", KEY_A).await })
        })
        .collect();
    sim.wait_for_calls(1).await;
    // Every other request is waiting on that one call before it is let go.
    poll_until("99 waiters on the one call", || async {
        scrape(&gw).await.value("mjgate_collapse_waiters", &[]) >= 99.0
    })
    .await;
    drop(hold);

    let replies = join_all(clients).await;
    let mut collapsed = 0;
    for reply in replies {
        let reply = reply.unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["id"], "hot");
        if reply.cache_status() == "mjgate; fwd=uri-miss; collapsed" {
            collapsed += 1;
        }
    }
    assert_eq!(sim.fetch_calls("hot"), 1);
    assert_eq!(
        collapsed, 99,
        "every waiter is marked collapsed, the leader stored"
    );
}

#[tokio::test]
async fn waiters_share_an_error_result_which_is_not_stored() {
    let (sim, gw) = start("").await;
    sim.create_task(KEY_A, "t", "IN_PROGRESS");
    sim.inject(Fault::Status(503), 1);
    let hold = sim.hold();
    let (a, b) = tokio::join!(fetch(&gw, "t", KEY_A), async {
        sim.wait_for_calls(1).await;
        let waiter = fetch(&gw, "t", KEY_A);
        tokio::pin!(waiter);
        // Give the second fetch time to join the flight before the upstream answers.
        tokio::select! {
            reply = &mut waiter => reply,
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                drop(hold);
                waiter.await
            }
        }
    });
    assert_eq!(a.status, 503);
    assert_eq!(b.status, 503);
    assert_eq!(b.cache_status(), "mjgate; fwd=uri-miss; collapsed");
    assert_eq!(sim.fetch_calls("t"), 1);

    let after = fetch(&gw, "t", KEY_A).await;
    assert_eq!(after.status, 200, "the error was not stored");
    assert_eq!(sim.fetch_calls("t"), 2);
}

#[tokio::test]
async fn the_starting_client_disconnecting_does_not_cancel_the_fetch() {
    let (sim, gw) = start("").await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    let hold = sim.hold();
    let gw = std::sync::Arc::new(gw);

    let leader = {
        let gw = std::sync::Arc::clone(&gw);
        tokio::spawn(async move { fetch(&gw, "t", KEY_A).await })
    };
    sim.wait_for_calls(1).await;
    let follower = {
        let gw = std::sync::Arc::clone(&gw);
        tokio::spawn(async move { fetch(&gw, "t", KEY_A).await })
    };
    wait_for_metric(&gw, "mjgate_collapse_waiters", 1.0).await;
    leader.abort(); // drops the leader's connection mid-fetch
    assert!(leader.await.unwrap_err().is_cancelled());
    drop(hold);

    let reply = follower.await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["status"], "SUCCESS");
    assert_eq!(fetch(&gw, "t", KEY_A).await.cache_status(), "mjgate; hit");
    assert_eq!(sim.fetch_calls("t"), 1);
}

#[tokio::test]
async fn a_fetch_abandoned_by_its_only_client_still_fills_the_cache() {
    let (sim, gw) = start("").await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    let hold = sim.hold();
    let gw = std::sync::Arc::new(gw);
    let lone = {
        let gw = std::sync::Arc::clone(&gw);
        tokio::spawn(async move { fetch(&gw, "t", KEY_A).await })
    };
    sim.wait_for_calls(1).await;
    lone.abort();
    let _ = lone.await;
    drop(hold);
    // The flight lands in its own task; poll until it has.
    for _ in 0..100 {
        let reply = fetch(&gw, "t", KEY_A).await;
        if reply.cache_status() == "mjgate; hit" {
            assert_eq!(sim.fetch_calls("t"), 1);
            return;
        }
        assert_eq!(reply.cache_status(), "mjgate; fwd=uri-miss; collapsed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the abandoned fetch never landed");
}

#[tokio::test]
async fn distinct_ids_are_not_collapsed_together() {
    let (sim, gw) = start("").await;
    sim.create_task(KEY_A, "x", "SUCCESS");
    sim.create_task(KEY_A, "y", "SUCCESS");
    let (x, y) = tokio::join!(fetch(&gw, "x", KEY_A), fetch(&gw, "y", KEY_A));
    assert_eq!(x.json()["id"], "x");
    assert_eq!(y.json()["id"], "y");
    assert_eq!((sim.fetch_calls("x"), sim.fetch_calls("y")), (1, 1));
}
