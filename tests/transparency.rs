//! Scenarios: a gateway drives a driver through shim and relay exactly as if
//! the driver were local, and the bridge never alters what it carries.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use openshell_driver_bridge::grpc::client::driver_client;
use openshell_driver_bridge::proto::compute::watch_sandboxes_event::Payload;
use openshell_driver_bridge::proto::compute::*;
use prost::Message;
use tonic::Code;

const SERVICE: &str = "/openshell.compute.v1.ComputeDriver";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_session_uses_every_method_through_the_chain() {
    let (chain, _driver) = Chain::with_demo_driver().await;
    let mut client = driver_client(&chain.shim_socket).await.unwrap();

    let caps = client.get_capabilities(GetCapabilitiesRequest {}).await.unwrap().into_inner();
    assert_eq!(caps.driver_name, "demo");
    let reqs =
        client.get_gateway_listener_requirements(GetGatewayListenerRequirementsRequest {}).await.unwrap().into_inner();
    assert_eq!(reqs.requirements.len(), 1);
    client.ensure_workspace(EnsureWorkspaceRequest { workspace: "ws".into() }).await.unwrap();
    let mut watch = client.watch_sandboxes(WatchSandboxesRequest {}).await.unwrap().into_inner();
    client.validate_sandbox_create(ValidateSandboxCreateRequest { sandbox: Some(sandbox("a")) }).await.unwrap();
    client.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox("a")) }).await.unwrap();
    let invalid =
        client.validate_sandbox_create(ValidateSandboxCreateRequest { sandbox: Some(sandbox("a")) }).await.unwrap_err();
    assert_eq!(invalid.code(), Code::AlreadyExists);

    // The watch delivers the sandbox becoming ready.
    let ready = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let event = watch.message().await.unwrap().unwrap();
            if let Some(Payload::Sandbox(s)) = event.payload {
                let s = s.sandbox.unwrap();
                if s.status.unwrap().conditions.iter().any(|c| c.r#type == "Ready" && c.status == "True") {
                    return s.id;
                }
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(ready, "a");

    let id = |id: &str| (id.to_string(), String::new());
    let (sid, sname) = id("a");
    client.stop_sandbox(StopSandboxRequest { sandbox_id: sid.clone(), sandbox_name: sname.clone() }).await.unwrap();
    client.start_sandbox(StartSandboxRequest { sandbox_id: sid.clone(), sandbox_name: sname.clone() }).await.unwrap();
    let got = client
        .get_sandbox(GetSandboxRequest { sandbox_id: sid.clone(), sandbox_name: sname.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.sandbox.unwrap().name, "name-a");
    let listed = client.list_sandboxes(ListSandboxesRequest {}).await.unwrap().into_inner();
    assert_eq!(listed.sandboxes.len(), 1);
    let deleted = client
        .delete_sandbox(DeleteSandboxRequest { sandbox_id: sid.clone(), sandbox_name: sname.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.deleted);
    let gone = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(Payload::Deleted(d)) = watch.message().await.unwrap().unwrap().payload {
                return d.sandbox_id;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(gone, "a");
    let again = client
        .delete_sandbox(DeleteSandboxRequest { sandbox_id: sid.clone(), sandbox_name: sname })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.deleted);
    let missing = client.get_sandbox(GetSandboxRequest { sandbox_id: sid, ..Default::default() }).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    client.delete_workspace(DeleteWorkspaceRequest { workspace: "ws".into() }).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_smoke_session_passes_through_the_chain() {
    let (chain, _driver) = Chain::with_demo_driver().await;
    let steps = openshell_driver_bridge::demo::smoke::run(&chain.shim_socket).await;
    assert!(openshell_driver_bridge::demo::smoke::passed(&steps), "{steps:#?}");
}

/// GetSandboxRequest{sandbox_id:"x"} plus field 99 (varint 7), which no
/// version of the bridge's proto knows.
fn request_with_unknown_field() -> Vec<u8> {
    let mut bytes = GetSandboxRequest { sandbox_id: "x".into(), ..Default::default() }.encode_to_vec();
    bytes.extend_from_slice(&[0x98, 0x06, 0x07]);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_cross_byte_for_byte_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::start_with(dir, |_| {}, |_| {}).await;
    let mut reply = GetSandboxResponse { sandbox: Some(sandbox("x")) }.encode_to_vec();
    reply.extend_from_slice(&[0xa2, 0x06, 0x03, b'n', b'e', b'w']); // field 100, "new"
    let reply = Bytes::from(reply);
    let answer = reply.clone();
    let driver = RawDriver::serve(&chain.driver_socket, move |_| Answer::ok(grpc_frame(&answer)));

    let request = grpc_frame(&request_with_unknown_field());
    let response = raw_call(&chain.shim_socket, &format!("{SERVICE}/GetSandbox"), &[], request.clone()).await;

    assert_eq!(response.grpc_status().as_deref(), Some("0"));
    assert_eq!(response.body, grpc_frame(&reply), "response bytes changed in transit");
    let seen = driver.calls();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, request, "request bytes changed in transit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_larger_than_every_window_passes_unaltered() {
    // 5 MiB is more than the 2 MiB stream windows of shim and relay and the
    // driver's own: the request crosses each hop only as the next one reads,
    // window by window. Once for a contract method (its headers wait for the
    // first frame) and once for a method the bridge does not know.
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::start_with(dir, |_| {}, |_| {}).await;
    let driver = RawDriver::serve(&chain.driver_socket, |call| Answer::ok(call.body.clone()));
    let message: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let body = grpc_frame(&message);
    for method in ["CreateSandbox", "SomethingNew"] {
        let path = format!("{SERVICE}/{method}");
        let response =
            tokio::time::timeout(Duration::from_secs(30), raw_call(&chain.shim_socket, &path, &[], body.clone()))
                .await
                .unwrap_or_else(|_| panic!("{method}: no answer within 30 s"));
        assert_eq!(response.grpc_status().as_deref(), Some("0"), "{method}");
        assert!(response.body == body, "{method}: the echo differs from the request");
        let seen = driver.calls().into_iter().find(|c| c.path == path).unwrap();
        assert!(seen.body == body, "{method}: the driver saw a different request");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_added_to_the_contract_later_reaches_the_driver() {
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::start_with(dir, |_| {}, |_| {}).await;
    let driver = RawDriver::serve(&chain.driver_socket, |call| Answer::ok(call.body.clone()));
    let body = grpc_frame(b"\x0a\x03new");
    let response = raw_call(&chain.shim_socket, &format!("{SERVICE}/SomethingNew"), &[], body.clone()).await;
    assert_eq!(response.grpc_status().as_deref(), Some("0"));
    assert_eq!(response.body, body);
    assert_eq!(driver.calls()[0].path, format!("{SERVICE}/SomethingNew"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_of_other_services_are_refused_and_never_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::start_with(dir, |_| {}, |_| {}).await;
    let driver = RawDriver::serve(&chain.driver_socket, |call| Answer::ok(call.body.clone()));
    for path in [
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/openshell.compute.v1.ComputeDriverAdmin/Drop",
        "/openshell.compute.v1.ComputeDriver/",
        "/",
    ] {
        let response = raw_call(&chain.shim_socket, path, &[], grpc_frame(b"")).await;
        assert_eq!(response.grpc_status().as_deref(), Some("12"), "{path}");
        assert!(response.grpc_message().contains("not a method of openshell.compute.v1.ComputeDriver"));
    }
    // Nor may a client of the relay reach them by talking to the relay
    // directly: the relay applies the same rule itself.
    for path in [
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/openshell.compute.v1.ComputeDriverAdmin/Drop",
        "/openshell.compute.v1.ComputeDriver/",
        "/",
    ] {
        let response = raw_tls_call(chain.relay.local_addr, &chain.pki, path, &[], grpc_frame(b"")).await;
        assert_eq!(response.grpc_status().as_deref(), Some("12"), "relay: {path}");
        assert!(response.grpc_message().contains("not a method of openshell.compute.v1.ComputeDriver"));
    }
    assert!(driver.calls().is_empty(), "a refused path reached the driver");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_reaches_the_driver_and_statuses_reach_the_gateway_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::start_with(dir, |_| {}, |_| {}).await;
    let details = b"\x08\x05\x12\x0bno such box".to_vec();
    let details_b64 = "CAUSC25vIHN1Y2ggYm94";
    let driver = RawDriver::serve(&chain.driver_socket, move |_| Answer {
        headers: vec![("x-driver-meta".into(), b"from-driver".to_vec())],
        trailers: vec![
            ("grpc-status".into(), b"5".to_vec()),
            ("grpc-message".into(), b"sandbox x not found: %C3%A9".to_vec()),
            ("grpc-status-details-bin".into(), details_b64.as_bytes().to_vec()),
        ],
        ..Default::default()
    });
    let _ = details;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = raw_call(
        &chain.shim_socket,
        &format!("{SERVICE}/GetSandbox"),
        &[
            ("traceparent", traceparent),
            ("tracestate", "vendor=1"),
            ("x-custom-meta", "custom-value"),
            ("x-custom-bin", "AAEC"),
            ("grpc-timeout", "30S"),
            ("grpc-encoding", "identity"),
        ],
        grpc_frame(b""),
    )
    .await;
    let seen = &driver.calls()[0];
    assert_eq!(seen.headers["traceparent"], traceparent);
    assert_eq!(seen.headers["tracestate"], "vendor=1");
    assert_eq!(seen.headers["x-custom-meta"], "custom-value");
    assert_eq!(seen.headers["x-custom-bin"], "AAEC");
    assert_eq!(seen.headers["grpc-timeout"], "30S");
    assert_eq!(seen.headers["te"], "trailers");
    assert_eq!(seen.headers["content-type"], "application/grpc");
    assert_eq!(response.headers["x-driver-meta"], "from-driver");
    // The response headers are exactly the driver's: nothing added on the
    // way back (hyper's server would add a `date`), nothing lost.
    let direct = raw_call(&chain.driver_socket, &format!("{SERVICE}/GetSandbox"), &[], grpc_frame(b"")).await;
    let sorted = |headers: &http::HeaderMap| {
        let mut pairs: Vec<(String, Vec<u8>)> =
            headers.iter().map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec())).collect();
        pairs.sort();
        pairs
    };
    assert_eq!(sorted(&response.headers), sorted(&direct.headers));
    assert!(response.headers.get("date").is_none());
    assert_eq!(response.trailers["grpc-status"], "5");
    assert_eq!(response.trailers["grpc-message"], "sandbox x not found: %C3%A9");
    assert_eq!(response.trailers["grpc-status-details-bin"], details_b64);

    // And through tonic, the gateway's own stack, the status decodes intact.
    let mut client = driver_client(&chain.shim_socket).await.unwrap();
    let status =
        client.get_sandbox(GetSandboxRequest { sandbox_id: "x".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "sandbox x not found: é");
    assert_eq!(status.details(), b"\x08\x05\x12\x0bno such box");
}

/// tonic (the gateway's stack) ends a unary request with an empty DATA
/// frame of its own behind the message. The driver gets the frames the
/// gateway sent, whether the driver was up as the gateway connected or the
/// call waited for it on a connection made while it was down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_request_reaches_the_driver_in_the_gateways_frames_whether_it_waited_or_not() {
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::start_with(dir, |_| {}, |_| {}).await;
    let request = GetSandboxRequest { sandbox_id: "sb-1".into(), ..Default::default() };
    let socket = chain.shim_socket.clone();
    let waiting = {
        let request = request.clone();
        tokio::spawn(async move { driver_client(&socket).await.unwrap().get_sandbox(request).await })
    };
    // The call is at the relay, waiting for the driver, once the relay
    // counts it as open.
    let relay = chain.relay.forwarder.metrics().clone();
    wait_for("the call to wait at the relay", || relay.in_flight() == 1).await;
    let driver = RawDriver::serve(&chain.driver_socket, |_| Answer::ok(grpc_frame(b"")));
    waiting.await.unwrap().unwrap();
    let mut direct = driver_client(&chain.driver_socket).await.unwrap();
    direct.get_sandbox(request.clone()).await.unwrap();
    let bridged = &mut driver_client(&chain.shim_socket).await.unwrap();
    bridged.get_sandbox(request.clone()).await.unwrap();
    let calls = driver.calls();
    let message = calls[1].body.len();
    assert_eq!(
        calls[1].frames,
        [message, 0],
        "tonic itself sends the message, then an empty frame that ends the stream"
    );
    assert_eq!(calls[0].frames, [message, 0], "the call that waited");
    assert_eq!(calls[2].frames, [message, 0], "a call on a connection made while the driver was up");
    assert_eq!(calls[0].body, calls[1].body);
    assert_eq!(calls[2].body, calls[1].body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_list_answer_passes_unaltered() {
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::start_with(dir, |_| {}, |_| {}).await;
    let sandboxes: Vec<DriverSandbox> = (0..7000)
        .map(|i| {
            let mut s = sandbox(&format!("sandbox-{i:05}"));
            s.spec.as_mut().unwrap().log_level = "x".repeat(420);
            s
        })
        .collect();
    let list = ListSandboxesResponse { sandboxes };
    let encoded = list.encode_to_vec();
    assert!(encoded.len() > 3_500_000 && encoded.len() < 4_000_000, "{}", encoded.len());
    let framed = grpc_frame(&encoded);
    let answer = framed.clone();
    RawDriver::serve(&chain.driver_socket, move |_| Answer::ok(answer.clone()));

    let raw = raw_call(&chain.shim_socket, &format!("{SERVICE}/ListSandboxes"), &[], grpc_frame(b"")).await;
    assert_eq!(raw.body.len(), framed.len());
    assert!(raw.body == framed, "large answer altered in transit");

    let mut client = driver_client(&chain.shim_socket).await.unwrap();
    let decoded = client.list_sandboxes(ListSandboxesRequest {}).await.unwrap().into_inner();
    assert_eq!(decoded, list);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_calls_on_one_gateway_connection() {
    let (chain, driver) = Chain::with_demo_driver().await;
    let client = driver_client(&chain.shim_socket).await.unwrap();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..200 {
        let mut client = client.clone();
        calls.spawn(async move {
            let id = format!("c-{i:03}");
            client.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox(&id)) }).await.map(|_| id)
        });
    }
    let mut created = Vec::new();
    while let Some(result) = calls.join_next().await {
        created.push(result.unwrap().unwrap());
    }
    assert_eq!(created.len(), 200);
    assert_eq!(driver.sandbox_count(), 200);
    let mut client = client.clone();
    let listed = client.list_sandboxes(ListSandboxesRequest {}).await.unwrap().into_inner();
    let mut ids: Vec<_> = listed.sandboxes.into_iter().map(|s| s.id).collect();
    ids.sort();
    created.sort();
    assert_eq!(ids, created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_socket_absent_fails_fast_with_unavailable_naming_the_driver() {
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::start_with(dir, |_| {}, |_| {}).await;
    let mut client = driver_client(&chain.shim_socket).await.unwrap();
    let started = Instant::now();
    let status = client.get_capabilities(GetCapabilitiesRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("driver"), "{}", status.message());
    assert!(status.message().contains("driver.sock"), "{}", status.message());
    assert!(status.message().contains("no such socket"), "{}", status.message());
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_fails_with_unavailable_naming_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"));
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let socket = dir.path().join("shim/s.sock");
    let shutdown = openshell_driver_bridge::shutdown::Shutdown::new();
    let _shim =
        openshell_driver_bridge::role::shim::start(shim_config(&pki, &socket, closed), shutdown.clone()).unwrap();
    let mut client = driver_client(&socket).await.unwrap();
    let started = Instant::now();
    let status = client.get_capabilities(GetCapabilitiesRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    let message = status.message();
    assert!(message.contains(&format!("upstream 127.0.0.1:{}", closed.port())), "{message}");
    assert!(message.contains("connection refused"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    shutdown.stop_now();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trailers_only_error_stays_trailers_only() {
    // Drivers answer early errors with the status in the only HEADERS frame;
    // grpcio (the C core) reports UNKNOWN unless it arrives exactly so.
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::start_with(dir, |_| {}, |_| {}).await;
    RawDriver::serve(&chain.driver_socket, |_| Answer {
        headers: vec![("grpc-status".into(), b"5".to_vec()), ("grpc-message".into(), b"no such sandbox".to_vec())],
        ..Default::default()
    });
    let response = raw_call(&chain.shim_socket, &format!("{SERVICE}/GetSandbox"), &[], grpc_frame(b"")).await;
    assert!(response.ended_with_headers, "the bridge added an empty DATA frame after a Trailers-Only response");
    assert_eq!(response.headers["grpc-status"], "5");
    assert_eq!(response.headers["grpc-message"], "no such sandbox");
    assert!(response.body.is_empty() && response.trailers.is_empty());
}
