//! On shutdown the gateway stops accepting, lets in-flight requests finish, then returns.

use std::time::Duration;

use mjgate::Drain;

use crate::support::*;

#[tokio::test]
async fn shutdown_drains_an_in_flight_request() {
    let (sim, mut gw) = start("[server]\nshutdown_grace = \"10s\"\n").await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    let hold = sim.hold();
    let url = gw.url("/mj/task/t/fetch");
    let in_flight = tokio::spawn(send(request(http::Method::GET, &url, Some(KEY_A), "")));
    sim.wait_for_calls(1).await;

    gw.begin_shutdown();
    // New connections are no longer accepted while the old one drains.
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(gw.addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the listener is closed during the drain");
    drop(hold);

    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["status"], "SUCCESS");
    assert_eq!(gw.join().await, Drain::Complete);
}

#[tokio::test]
async fn the_drain_gives_up_after_the_grace_period() {
    let (sim, mut gw) = start("[server]\nshutdown_grace = \"200ms\"\n").await;
    sim.create_task(KEY_A, "t", "SUCCESS");
    let _hold = sim.hold();
    let url = gw.url("/mj/task/t/fetch");
    let _in_flight = tokio::spawn(send(request(http::Method::GET, &url, Some(KEY_A), "")));
    sim.wait_for_calls(1).await;
    gw.begin_shutdown();
    assert_eq!(gw.join().await, Drain::TimedOut);
}

#[tokio::test]
async fn an_idle_gateway_shuts_down_at_once() {
    let (_sim, gw) = start("").await;
    assert_eq!(fetch(&gw, "x", KEY_A).await.status, 404);
    assert_eq!(gw.shutdown().await, Drain::Complete);
}
