//! Response smuggling, the upstream's side: an upstream that sends more than the response
//! it was asked for (bytes after it, a body where none may be, a second response) must
//! never reach the next client through a reused connection. Table-driven against a raw
//! recording upstream; every case checks what the first client got, then what a second
//! client, on a connection of its own, gets.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::StatusCode;
use support::raw_upstream::raw_upstream;
use support::Sluice;
use tokio::io::AsyncWriteExt;

/// What the upstream answers to the first request.
struct Case {
    name: &'static str,
    method: &'static str,
    /// Written at once.
    first: &'static str,
    /// Written once the first client has its answer (a late or unsolicited response),
    /// before the second request is sent.
    late: &'static str,
    /// What the first client must get.
    status: u16,
    body: &'static str,
}

const POISON: &str = "HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nPOISONED";
const SECOND: &str = "HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecond";

const CASES: &[Case] = &[
    Case {
        name: "bytes after a content-length body",
        method: "GET",
        first: "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokPOISONED",
        late: "",
        status: 200,
        body: "ok",
    },
    Case {
        name: "a second response in the same write",
        method: "GET",
        first: concat!(
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            "HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nPOISONED"
        ),
        late: "",
        status: 200,
        body: "ok",
    },
    Case {
        name: "a second response written later",
        method: "GET",
        first: "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        late: POISON,
        status: 200,
        body: "ok",
    },
    Case {
        name: "bytes after the last chunk",
        method: "GET",
        first: "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nPOISONED",
        late: "",
        status: 200,
        body: "ok",
    },
    Case {
        name: "a body on a 204",
        method: "GET",
        first: "HTTP/1.1 204 No Content\r\ncontent-length: 8\r\n\r\nPOISONED",
        late: "",
        status: 204,
        body: "",
    },
    Case {
        name: "a response after a 204's head",
        method: "GET",
        first: concat!(
            "HTTP/1.1 204 No Content\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nPOISONED"
        ),
        late: "",
        status: 204,
        body: "",
    },
    Case {
        name: "a body on a 304",
        method: "GET",
        first: "HTTP/1.1 304 Not Modified\r\ncontent-length: 8\r\n\r\nPOISONED",
        late: "",
        status: 304,
        body: "",
    },
    Case {
        name: "a body on a response to HEAD",
        method: "HEAD",
        first: "HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nPOISONED",
        late: "",
        status: 200,
        body: "",
    },
    Case {
        name: "a body on a response to HEAD, written later",
        method: "HEAD",
        first: "HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\n",
        late: "POISONED",
        status: 200,
        body: "",
    },
    Case {
        name: "content-length and chunks, then bytes",
        method: "GET",
        first: "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nPOISONED",
        late: "",
        status: 200,
        body: "ok",
    },
    Case {
        name: "an interim response, the answer and a second response",
        method: "GET",
        first: concat!(
            "HTTP/1.1 100 Continue\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            "HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nPOISONED"
        ),
        late: "",
        status: 200,
        body: "ok",
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_upstream_sends_beyond_its_response_never_reaches_the_next_client() {
    for case in CASES {
        let requests = Arc::new(AtomicUsize::new(0));
        // The late bytes' writer, handed over once the first response is out.
        let parked = Arc::new(Mutex::new(None));
        let (count, park) = (requests.clone(), parked.clone());
        let (upstream, connections) = raw_upstream(move |mut socket, _| {
            let (count, park) = (count.clone(), park.clone());
            async move {
                if count.fetch_add(1, Ordering::SeqCst) > 0 {
                    socket.write_all(SECOND.as_bytes()).await.ok()?;
                    return Some(socket);
                }
                socket.write_all(case.first.as_bytes()).await.ok()?;
                // Kept open (and its late bytes unwritten) until the test says.
                *park.lock().unwrap() = Some(socket);
                None
            }
        })
        .await;
        let (dir, path) = support::config_file(&format!(
            "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\n\
             upstream: {{ url: http://{upstream} }}\n\
             unknown_key: {{ plan: p, per: key }}\n\
             plans: {{ p: {{ limits: {{ all: 1000000/s }} }} }}\n"
        ));
        let sluice = Sluice::start(&path, &[]);
        let mut first = sluice.connect().await;
        let reply = first
            .send(case.method, "/first", &[("x-api-key", "k")])
            .await
            .unwrap();
        assert_eq!(
            (reply.status.as_u16(), reply.body.as_str()),
            (case.status, case.body),
            "{}: the first client",
            case.name
        );
        let socket = parked.lock().unwrap().take();
        let mut socket = socket.expect("the first request reached the upstream");
        if !case.late.is_empty() {
            socket.write_all(case.late.as_bytes()).await.unwrap();
        }
        let mut second = sluice.connect().await;
        let reply = second
            .send("GET", "/second", &[("x-api-key", "k")])
            .await
            .unwrap();
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::OK, "second"),
            "{}: the second client",
            case.name
        );
        assert_eq!(
            connections.load(Ordering::SeqCst),
            2,
            "{}: the second request went on a connection of its own",
            case.name
        );
        drop((socket, sluice, dir));
    }
}
