//! The Prometheus endpoint as an HTTP server: bad requests get proper
//! errors (and the server keeps serving), and a slow or silent client
//! never holds up another scrape.
use std::{
    io::{Read, Write},
    net::{Shutdown, TcpStream},
};

use netbridge::netns::{Netns, run_blocking_in};
use netbridge_tests::{Sandbox, example, require_root};

const ADDR: &str = "127.0.0.1:9469";

/// A bridge-three lab and `netbridge metrics` serving it in the sandbox
/// host; returns when the endpoint accepts connections.
fn serving() -> Sandbox {
    let mut sb = Sandbox::new();
    let prefix = sb.prefix();
    let file = example("bridge-three.toml");
    sb.nb_ok(&["up", "-f", &file, "--prefix", &prefix]);
    let bin = netbridge_tests::netbridge_bin();
    let topo = sb.name("bridge-three");
    let host = sb.host.clone();
    let argv = [
        bin.to_str().unwrap(),
        "metrics",
        "--name",
        &topo,
        "--listen",
        ADDR,
    ];
    sb.spawn(&host, &argv);
    let up = Sandbox::wait_for(std::time::Duration::from_secs(10), || connect(&sb).ok());
    assert!(up.is_some(), "metrics endpoint never came up");
    sb
}

/// A TCP connection to the endpoint, made inside the sandbox host (the
/// socket stays in that namespace).
fn connect(sb: &Sandbox) -> std::io::Result<TcpStream> {
    run_blocking_in(&Netns::named(&sb.host), || TcpStream::connect(ADDR)).unwrap()
}

/// Reads the whole response (the server closes the connection).
fn response(mut s: TcpStream) -> String {
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn exchange(sb: &Sandbox, raw: &[u8]) -> String {
    let mut s = connect(sb).unwrap();
    s.write_all(raw).unwrap();
    response(s)
}

/// Headers and body of a response; asserts Content-Length matches.
fn split(resp: &str) -> (&str, &str) {
    let (head, body) = resp.split_once("\r\n\r\n").expect("no end of headers");
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("no Content-Length");
    assert_eq!(len.parse::<usize>().unwrap(), body.len(), "{resp}");
    (head, body)
}

fn assert_metrics(resp: &str) {
    let (head, body) = split(resp);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(
        body.contains("# TYPE netbridge_port_rx_packets_total counter"),
        "{body}"
    );
}

#[test]
fn malformed_and_non_get_requests_get_proper_errors() {
    require_root!();
    let sb = serving();
    let long_header = format!(
        "GET /metrics HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(10_000)
    );
    let cases: [(&[u8], &str); 9] = [
        (
            b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "405 Method Not Allowed",
        ),
        (b"BREW /metrics HTTP/1.1\r\n\r\n", "405 Method Not Allowed"),
        (b"HEAD /metrics HTTP/1.1\r\n\r\n", "405 Method Not Allowed"),
        (b"GET /nope HTTP/1.1\r\n\r\n", "404 Not Found"),
        (b"garbage\r\n\r\n", "400 Bad Request"),
        (b"GET /metrics\r\n\r\n", "400 Bad Request"),
        (b"GET /metrics SPDY/3\r\n\r\n", "400 Bad Request"),
        (
            b"\xff\xfe\x00\x01 /metrics HTTP/1.1\r\n\r\n",
            "400 Bad Request",
        ),
        (
            long_header.as_bytes(),
            "431 Request Header Fields Too Large",
        ),
    ];
    for (raw, status) in cases {
        let resp = exchange(&sb, raw);
        let (head, _) = split(&resp);
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status}\r\n")),
            "{:?} -> {resp}",
            String::from_utf8_lossy(raw)
        );
        if status.starts_with("405") {
            assert!(head.contains("\r\nAllow: GET"), "{head}");
        }
        // The server is still serving after each bad request.
        assert_metrics(&exchange(&sb, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
    }
    // A request cut short by the client: 400; a client that says nothing
    // and leaves: no answer; a query string is still /metrics.
    let mut s = connect(&sb).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert!(response(s).starts_with("HTTP/1.1 400 Bad Request\r\n"));
    let s = connect(&sb).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(response(s), "");
    assert_metrics(&exchange(&sb, b"GET /metrics?name=x HTTP/1.0\r\n\r\n"));
}

/// One client sends half a request and waits; another sends nothing at
/// all. Scrapes meanwhile are answered at once, the first client gets its
/// answer when it finishes its request, and the silent one is told it
/// timed out.
#[test]
fn slow_client_does_not_block_other_scrapes() {
    require_root!();
    let sb = serving();
    let mut slow = connect(&sb).unwrap();
    slow.write_all(b"GET /met").unwrap();
    let silent = connect(&sb).unwrap();
    for _ in 0..3 {
        assert_metrics(&exchange(&sb, b"GET /metrics HTTP/1.1\r\n\r\n"));
    }
    // Still open: the server did not give up on the slow client to serve
    // the others (a one-at-a-time server would have timed it out first).
    slow.write_all(b"rics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_metrics(&response(slow));
    let resp = response(silent);
    assert!(
        resp.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{resp}"
    );
}
