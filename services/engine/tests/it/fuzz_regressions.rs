//! The fuzz targets' inputs, replayed on stable in the ordinary suite: the
//! committed seed corpus (`fuzz/corpus/<target>/seed-*`) and every input a
//! fuzzer crashed on (`fuzz/regressions/<target>/*`, kept after the fix),
//! through the same entry points the targets call (`engine::fuzzing`).
//! `scripts/fuzz` does the fuzzing itself.
//!
//! `write_seeds` (ignored) regenerates the seed corpus:
//! `cargo test --release --test it fuzz_regressions::write_seeds -- --ignored`.

use std::path::{Path, PathBuf};

use engine::fuzzing;

type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("wal_segment", fuzzing::wal_segment),
    ("codec_decode", fuzzing::codec_decode),
    ("codec_round_trip", fuzzing::codec_round_trip),
    ("csv_import", fuzzing::csv_import),
    ("csv_round_trip", fuzzing::csv_round_trip),
    ("nats_message", fuzzing::nats_message),
    ("grpc_request", fuzzing::grpc_request),
    ("http_query", fuzzing::http_query),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn files(dir: &Path, seeds_only: bool) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            !seeds_only
                || p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("seed-"))
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_seed_and_every_crash_input_passes_its_target() {
    let mut replayed = 0;
    for (name, target) in TARGETS {
        let seeds = files(&fuzz_dir().join("corpus").join(name), true);
        assert!(!seeds.is_empty(), "no seed corpus for fuzz target {name}");
        let crashes = files(&fuzz_dir().join("regressions").join(name), false);
        for file in seeds.iter().chain(&crashes) {
            let bytes = std::fs::read(file).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&bytes));
            assert!(outcome.is_ok(), "{name} fails on {}", file.display());
            replayed += 1;
        }
    }
    assert!(replayed >= TARGETS.len());
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = fuzz_dir().join("corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
}

fn u64s(values: &[u64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Protobuf: a length-delimited field.
fn pb_bytes(field: u32, bytes: &[u8], out: &mut Vec<u8>) {
    pb_varint(u64::from(field << 3 | 2), out);
    pb_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

fn pb_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[test]
#[ignore = "regenerates the committed seed corpus"]
fn write_seeds() {
    // WAL: a segment of two records (direct write; stream points with
    // seqs), the same segment cut mid-record (a torn tail), and one payload
    // to be framed (mode 2).
    let segment = fuzzing::encode_segment(&[
        (
            1 << 62,
            vec![(
                "plant/line-1/pressure",
                vec![
                    (1_767_225_600_000, 4.2, 192),
                    (1_767_225_601_000, f64::NAN, 0),
                ],
                None,
            )],
        ),
        (
            0,
            vec![
                ("a", vec![(-5, -0.0, 64)], Some(vec![17])),
                (
                    "Kessel Ü1/Temperatur",
                    vec![(0, 1e-310, 192)],
                    Some(vec![18]),
                ),
            ],
        ),
    ]);
    write(
        "wal_segment",
        "two-records",
        &[[1].as_slice(), &segment].concat(),
    );
    write(
        "wal_segment",
        "torn-tail",
        &[[1].as_slice(), &segment[..segment.len() - 5]].concat(),
    );
    let payload =
        &fuzzing::encode_segment(&[(9, vec![("x", vec![(1, 2.0, 3)], Some(vec![4]))])])[8 + 12..];
    write(
        "wal_segment",
        "payload",
        &[[3].as_slice(), payload].concat(),
    );

    // Blocks: regular decimal, jittery steps with full-precision values,
    // odd values (exceptions), a single point, varying versions.
    let n = 300;
    let ts: Vec<i64> = (0..n).map(|i| 1_767_225_600_000 + i * 1000).collect();
    let decimals: Vec<f64> = (0..n).map(|i| (i % 50) as f64 / 10.0).collect();
    let q = vec![192u8; n as usize];
    let v1 = vec![5u64; n as usize];
    write(
        "codec_decode",
        "regular-decimal",
        &fuzzing::encode_block(&ts, &decimals, &q, &v1),
    );
    let jitter: Vec<i64> = (0..n).map(|i| i * 1000 + (i * 7919) % 13).collect();
    let precise: Vec<f64> = (0..n).map(|i| (i as f64).sin() * 1e3).collect();
    let versions: Vec<u64> = (0..n as u64).map(|i| 100 + i * 3 % 7).collect();
    let qualities: Vec<u8> = (0..n).map(|i| if i % 17 == 0 { 0 } else { 192 }).collect();
    write(
        "codec_decode",
        "jitter-xor",
        &fuzzing::encode_block(&jitter, &precise, &qualities, &versions),
    );
    let mut odd = decimals.clone();
    odd[3] = -0.0;
    odd[10] = f64::NAN;
    odd[20] = f64::INFINITY;
    write(
        "codec_decode",
        "exceptions",
        &fuzzing::encode_block(&ts, &odd, &q, &v1),
    );
    write(
        "codec_decode",
        "one-point",
        &fuzzing::encode_block(&[-1], &[f64::MIN_POSITIVE / 4.0], &[64], &[1]),
    );
    let irregular: Vec<i64> = (0..n).map(|i| i * i * 37).collect();
    write(
        "codec_decode",
        "irregular",
        &fuzzing::encode_block(&irregular, &decimals, &q, &v1),
    );

    // Round trip: mode byte, start, version, then per point control bytes.
    let mut rt = vec![0u8];
    rt.extend(u64s(&[1_767_225_600_000, 7]));
    for i in 0..64u8 {
        rt.push(1 | (i % 3) << 2);
        rt.push(i);
    }
    write("codec_round_trip", "decimals", &rt);
    let mut rt = vec![0b111u8];
    rt.extend(u64s(&[0, 1]));
    for i in 0..32u64 {
        rt.push(0x20);
        rt.extend(u64s(&[i.wrapping_mul(0x9E37_79B9_7F4A_7C15)]));
        rt.push(200);
        rt.push(i as u8);
        rt.extend(u64s(&[i * 12345]));
    }
    write("codec_round_trip", "bits", &rt);

    // CSV import.
    write(
        "csv_import",
        "export-format",
        b"timestamp_ms,value,quality\n1767225600000,21.5,192\n1767225601000,NaN,0\n-1,-0,64\n",
    );
    write(
        "csv_import",
        "bom-crlf-quoted",
        b"\xEF\xBB\xBFtimestamp_ms,value,quality\r\n\"1767225600000\",1e-310,192\r\n\r\n253402127999999,inf,255\r\n",
    );
    write(
        "csv_import",
        "bad-row",
        b"timestamp_ms,value,quality\n1,2\n",
    );
    let mut rt = Vec::new();
    for (ts, v, q) in [
        (0u64, 1.5f64, 192u8),
        (u64::MAX, f64::NAN, 0),
        (5, -0.0, 64),
    ] {
        rt.extend(u64s(&[ts, v.to_bits()]));
        rt.push(q);
    }
    write("csv_round_trip", "points", &rt);

    // NATS messages.
    write(
        "nats_message",
        "one",
        br#"{"sensor_id": "plant/line-1/pressure", "timestamp_ms": 1767225600000, "value": 4.2, "quality": 192}"#,
    );
    write(
        "nats_message",
        "array",
        br#"[{"sensor_id":"a","timestamp_ms":1,"value":"NaN"},{"sensor_id":"b","timestamp_ms":-2,"value":-0.0,"quality":0},{"sensor_id":"c","timestamp_ms":3,"value":1.7976931348623157e308}]"#,
    );
    write(
        "nats_message",
        "bad",
        br#"{"sensor_id":"","timestamp_ms":"x"}"#,
    );

    // gRPC WriteRequest { points: [Point { sensor_id, timestamp_ms, value, quality }] }.
    let mut point = Vec::new();
    pb_bytes(1, b"plant/line-1/pressure", &mut point);
    pb_varint(2 << 3, &mut point);
    pb_varint(1_767_225_600_000, &mut point);
    pb_varint(3 << 3 | 1, &mut point);
    point.extend_from_slice(&4.2f64.to_le_bytes());
    pb_varint(4 << 3, &mut point);
    pb_varint(192, &mut point);
    let mut request = Vec::new();
    pb_bytes(1, &point, &mut request);
    pb_bytes(1, &point, &mut request);
    write("grpc_request", "write", &request);
    let mut scan = Vec::new();
    pb_bytes(1, b"a", &mut scan);
    pb_varint(2 << 3, &mut scan);
    pb_varint(5, &mut scan);
    write("grpc_request", "scan", &scan);

    // HTTP query strings.
    write(
        "http_query",
        "export",
        b"sensor_id=plant%2Fline-1%2Fpressure&start_ts=2026-01-01T00:00:00Z&end_ts=1767312000000",
    );
    write(
        "http_query",
        "analysts",
        b"sensor_id=a&sensor_id=b&start_ts=0&end_ts=86400000&layout=wide&interval=1h&aggregate=mean,time_weighted_mean,percent_good&time_zone=Europe/Berlin&format=parquet&preset=excel&delimiter=%3B&decimal=%2C&fill=previous&include_bad=true&exported_at=5&max_points=100",
    );
    write(
        "http_query",
        "series",
        b"sensor_id=K%C3%BC&start_ts=-5&end_ts=9&max_points=4",
    );
}
