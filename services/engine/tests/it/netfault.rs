//! NATS ingestion over a broken network: nats-server in a network
//! namespace of its own, the engine reaching it over one veth pair (the
//! link we break), the test's publisher over another (never touched, so
//! sensors keep publishing into JetStream while the engine is cut off).
//!
//! The engine's link first gets delay and loss (`tc netem` where the kernel
//! has it; this machine's kernel is built without sch_netem, so then 5 %
//! random loss from an nftables rule and queueing delay from a `tbf` rate
//! limit), then is cut (`ip link set down`) for `NETFAULT_CUT_SECS`
//! (default 30) and restored. The consumer must reconnect by itself;
//! afterwards every published (acknowledged) point is in the export once,
//! with its published value, bit for bit.
//!
//! Needs root and iproute2 (`ip`, `tc`; nftables for the fallback);
//! skipped, saying why, without them.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ingest_support::{Engine, NATS_SERVER};
use crate::nats::{points_message, value_of};

/// Points per message.
const POINTS: i64 = 20;
const SENSORS: [&str; 4] = ["nf/a", "nf/b", "Kessel Ü1/Temperatur", "nf/d"];

fn run(args: &[&str]) -> Result<(), String> {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) {
    if let Err(why) = run(args) {
        panic!("{why}");
    }
}

/// Why this machine cannot run the test, if it cannot.
fn unsupported() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces, veth pairs, tc)".into());
    }
    for tool in ["ip", "tc"] {
        if Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            return Some(format!("`{tool}` is missing (Debian: iproute2)"));
        }
    }
    None
}

/// A namespace holding nats-server, joined to the host by two veth pairs:
/// `engine_link` (faulted) and `control_link` (the test's own). Removed,
/// with its links and rules, on drop.
struct Netns {
    name: String,
    /// Host end of the engine's link.
    host_if: String,
    /// Namespace end of the engine's link.
    ns_if: String,
    /// nats-server's address as the engine reaches it.
    engine_addr: String,
    /// nats-server's address as the test reaches it.
    control_addr: String,
}

impl Netns {
    fn create() -> Self {
        let id = std::process::id() % 100_000;
        let (a, b) = (10 + id % 200, id / 200 % 250);
        let netns = Self {
            name: format!("enginenf{id}"),
            host_if: format!("nfe{id}h"),
            ns_if: format!("nfe{id}n"),
            engine_addr: format!("10.{a}.{b}.2"),
            control_addr: format!("10.{a}.{b}.6"),
        };
        let _ = run(&["ip", "netns", "del", &netns.name]);
        must(&["ip", "netns", "add", &netns.name]);
        let ns = netns.name.as_str();
        must(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        for (host_if, ns_if, host_addr, ns_addr) in [
            (
                netns.host_if.clone(),
                netns.ns_if.clone(),
                format!("10.{a}.{b}.1/30"),
                format!("{}/30", netns.engine_addr),
            ),
            (
                format!("nfc{id}h"),
                format!("nfc{id}n"),
                format!("10.{a}.{b}.5/30"),
                format!("{}/30", netns.control_addr),
            ),
        ] {
            let _ = run(&["ip", "link", "del", &host_if]);
            must(&[
                "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
            ]);
            must(&["ip", "link", "set", &ns_if, "netns", ns]);
            must(&["ip", "addr", "add", &host_addr, "dev", &host_if]);
            must(&["ip", "link", "set", &host_if, "up"]);
            must(&["ip", "-n", ns, "addr", "add", &ns_addr, "dev", &ns_if]);
            must(&["ip", "-n", ns, "link", "set", &ns_if, "up"]);
        }
        netns
    }

    /// Delay and loss on the engine's link, both directions. Says which
    /// mechanism it used.
    fn impair(&self) -> &'static str {
        let ns = self.name.as_str();
        let netem = ["netem", "delay", "40ms", "20ms", "loss", "5%"];
        // The same queueing discipline on both ends of the link.
        let both_ends = |qdisc: &[&'static str]| {
            let host_if: &str = &self.host_if;
            let ns_if: &str = &self.ns_if;
            [
                [&["tc", "qdisc", "add", "dev", host_if, "root"][..], qdisc].concat(),
                [
                    &[
                        "ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", ns_if, "root",
                    ][..],
                    qdisc,
                ]
                .concat(),
            ]
        };
        let [host, inside] = both_ends(&netem);
        if run(&host).is_ok() {
            must(&inside);
            return "tc netem: 40±20 ms delay, 5 % loss each way";
        }
        // No sch_netem in this kernel: loss from nftables, delay from a
        // rate limit's queue.
        for command in both_ends(&["tbf", "rate", "4mbit", "burst", "16kb", "latency", "150ms"]) {
            must(&command);
        }
        let rules = format!(
            "table inet netfault {{ \
               chain input {{ type filter hook input priority 0; iifname \"{0}\" numgen random mod 100 < 5 drop; }}; \
               chain output {{ type filter hook output priority 0; oifname \"{0}\" numgen random mod 100 < 5 drop; }}; \
             }}",
            self.ns_if
        );
        must(&["ip", "netns", "exec", ns, "nft", &rules]);
        "no sch_netem in this kernel: 5 % random loss each way (nftables), \
         4 Mbit/s with up to 150 ms of queue each way (tbf)"
    }

    fn cut(&self) {
        must(&["ip", "link", "set", &self.host_if, "down"]);
    }

    /// Link up again, without delay or loss.
    fn restore(&self) {
        let ns = self.name.as_str();
        let _ = run(&["tc", "qdisc", "del", "dev", &self.host_if, "root"]);
        let _ = run(&[
            "ip",
            "netns",
            "exec",
            ns,
            "tc",
            "qdisc",
            "del",
            "dev",
            &self.ns_if,
            "root",
        ]);
        let _ = run(&[
            "ip",
            "netns",
            "exec",
            ns,
            "nft",
            "delete table inet netfault",
        ]);
        must(&["ip", "link", "set", &self.host_if, "up"]);
    }

    /// nats-server with JetStream inside the namespace, on every address.
    fn start_nats(&self, store_dir: &std::path::Path) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.name, NATS_SERVER])
            .args(["-a", "0.0.0.0", "-p", "4222", "-js", "-sd"])
            .arg(store_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server in the namespace")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth ends and with them the
        // pairs, and its nftables table.
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn consumer_info(
    js: &async_nats::jetstream::Context,
) -> Option<async_nats::jetstream::consumer::Info> {
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream("SENSORS")
        .await
        .ok()?
        .get_consumer("sensor-engine")
        .await
        .ok()?;
    consumer.info().await.ok().cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_ingestion_survives_delay_loss_and_a_cut_link_without_loss_or_duplicates() {
    if let Some(why) = unsupported() {
        eprintln!("SKIPPED netfault: {why}");
        return;
    }
    let cut_secs: u64 = std::env::var("NETFAULT_CUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let netns = Netns::create();
    let nats_dir = tempfile::tempdir().unwrap();
    let _nats = KillOnDrop(netns.start_nats(nats_dir.path()));
    let control_url = format!("nats://{}:4222", netns.control_addr);
    let client = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match async_nats::connect(&control_url).await {
                Ok(client) => break client,
                Err(error) => {
                    assert!(Instant::now() < deadline, "nats-server: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    };
    let js = async_nats::jetstream::new(client);
    let dir = tempfile::tempdir().unwrap();
    let engine_url = format!("nats://{}:4222", netns.engine_addr);
    let engine = Engine::start(dir.path(), &["--nats-url", &engine_url]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while consumer_info(&js).await.is_none() {
        assert!(
            Instant::now() < deadline,
            "the engine never created its consumer"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Publishes messages, each awaited (acknowledged by the stream), until
    // told to stop; message i carries chunk i/4 of sensor i%4.
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let publisher = tokio::spawn({
        let js = js.clone();
        async move {
            let mut last_seq = 0;
            let mut published = 0usize;
            while !*stopped.borrow_and_update() {
                let sensor = published % SENSORS.len();
                let chunk = (published / SENSORS.len()) as i64;
                let payload = points_message(SENSORS[sensor], chunk * POINTS, POINTS, 0);
                let ack = js
                    .publish(format!("sensors.{sensor}"), payload.into())
                    .await
                    .expect("publish on the control link")
                    .await
                    .expect("stream acknowledgement on the control link");
                last_seq = ack.sequence;
                published += 1;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    _ = stopped.changed() => {}
                }
            }
            (published, last_seq)
        }
    });

    tokio::time::sleep(Duration::from_secs(2)).await;
    let how = netns.impair();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let degraded = consumer_info(&js).await.expect("consumer info");
    assert!(
        degraded.ack_floor.stream_sequence > 0,
        "the engine consumed nothing over the degraded link: {degraded:?}"
    );
    netns.cut();
    let cut_at = Instant::now();
    // Wait out the cut, noting what the engine acknowledged meanwhile (the
    // messages it held before the cut, at most).
    tokio::time::sleep(Duration::from_secs(cut_secs.min(5))).await;
    let early = consumer_info(&js).await.expect("consumer info");
    tokio::time::sleep(Duration::from_secs(cut_secs.saturating_sub(5))).await;
    let late = consumer_info(&js).await.expect("consumer info");
    assert_eq!(
        early.ack_floor.stream_sequence, late.ack_floor.stream_sequence,
        "acknowledgements reached the server over a cut link"
    );
    assert!(
        late.num_pending > 0,
        "messages published during the cut wait for the engine: {late:?}"
    );
    netns.restore();
    let restored_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.send(true).unwrap();
    let (published, last_seq) = publisher.await.unwrap();

    // The consumer reconnects by itself and catches up.
    let deadline = Instant::now() + Duration::from_secs(60);
    let settled = loop {
        if let Some(info) = consumer_info(&js).await
            && info.ack_floor.stream_sequence == last_seq
            && info.num_ack_pending == 0
            && info.num_pending == 0
        {
            break info;
        }
        assert!(
            Instant::now() < deadline,
            "the engine did not catch up after the link came back: {:?}",
            consumer_info(&js).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let caught_up = restored_at.elapsed();

    // Every point once, with its published value: the export (HTTP, CSV,
    // shortest round-trip decimals) read back bit for bit.
    let http = reqwest::Client::new();
    for (index, sensor) in SENSORS.iter().enumerate() {
        let chunks = (published + SENSORS.len() - 1 - index) / SENSORS.len();
        let expected_rows = chunks as i64 * POINTS;
        let body = http
            .get(format!(
                "http://127.0.0.1:{}/api/v1/export?sensor_id={}&start_ts=0&end_ts={expected_rows}",
                engine.http_port,
                sensor
                    .replace('/', "%2F")
                    .replace(' ', "%20")
                    .replace('Ü', "%C3%9C")
            ))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .text()
            .await
            .unwrap();
        let rows: Vec<&str> = body.lines().skip(1).collect();
        assert_eq!(
            rows.len() as i64,
            expected_rows,
            "{sensor}: every published point, once"
        );
        for (i, row) in rows.iter().enumerate() {
            let fields: Vec<&str> = row.split(',').collect();
            let ts: i64 = fields[0].parse().unwrap();
            let value: f64 = fields[1].parse().unwrap();
            assert_eq!(ts, i as i64, "{sensor}: contiguous from 0");
            assert_eq!(
                value.to_bits(),
                value_of(ts, 0).to_bits(),
                "{sensor} at {ts}: the published value"
            );
        }
    }
    eprintln!(
        "netfault: {how}; cut {cut_secs} s ({:.1} s measured); {published} messages \
         ({} points), {} acknowledged before the cut; caught up {:.1} s after the \
         link came back; {} deliveries for {last_seq} messages",
        restored_at.duration_since(cut_at).as_secs_f64(),
        published as i64 * POINTS,
        early.ack_floor.stream_sequence,
        caught_up.as_secs_f64(),
        settled.delivered.consumer_sequence,
    );
}
