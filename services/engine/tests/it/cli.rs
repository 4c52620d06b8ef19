//! The `engine` command line, run as a real process.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::support::engine_bin;

fn engine(args: &[&str], data_dir: &Path, stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(engine_bin())
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn failure(output: Output) -> String {
    assert!(!output.status.success(), "unexpected success");
    String::from_utf8(output.stderr).unwrap()
}

const SENSOR: &str = "Kessel Ü1/Temperatur, \"Nord\"";

const CSV: &str = "timestamp_ms,value,quality\n\
    -5000,-0.0,0\n\
    0,5e-324,64\n\
    1000,NaN,192\n\
    2000,inf,192\n\
    3000,-inf,192\n\
    4000,0.30000000000000004,192\n\
    1767225600000,21.5,192\n";

#[test]
fn import_then_export_is_the_identity_and_ranges_are_half_open() {
    let dir = tempfile::tempdir().unwrap();
    // Rows out of order on the way in, CRLF line ends: sorted and normalised on the way out.
    let shuffled = "timestamp_ms,value,quality\r\n1767225600000,21.5,192\r\n-5000,-0.0,0\r\n\
        4000,0.30000000000000004,192\r\n0,5e-324,64\r\n3000,-inf,192\r\n1000,NaN,192\r\n2000,inf,192\r\n";
    let stderr = String::from_utf8(
        engine(
            &["import", "--sensor", SENSOR],
            dir.path(),
            Some(shuffled.as_bytes()),
        )
        .stderr,
    )
    .unwrap();
    assert!(stderr.contains("imported 7 points"), "{stderr}");
    assert_eq!(
        ok(engine(&["export", "--sensor", SENSOR], dir.path(), None)),
        CSV
    );

    let file = dir.path().join("again.csv");
    std::fs::write(&file, CSV).unwrap();
    ok(engine(
        &["import", "--sensor", "copy", file.to_str().unwrap()],
        dir.path(),
        None,
    ));
    assert_eq!(
        ok(engine(&["export", "--sensor", "copy"], dir.path(), None)),
        CSV
    );

    let ranged = ok(engine(
        &[
            "export",
            "--sensor",
            SENSOR,
            "--start",
            "0",
            "--end",
            "1970-01-01T00:00:03Z",
        ],
        dir.path(),
        None,
    ));
    assert_eq!(
        ranged,
        "timestamp_ms,value,quality\n0,5e-324,64\n1000,NaN,192\n2000,inf,192\n"
    );
    let empty = ok(engine(
        &["export", "--sensor", SENSOR, "--start", "10", "--end", "20"],
        dir.path(),
        None,
    ));
    assert_eq!(empty, "timestamp_ms,value,quality\n");

    let listing = ok(engine(&["sensors"], dir.path(), None));
    assert_eq!(
        listing,
        format!(
            "sensor_id\tcount\tfirst_timestamp_ms\tlast_timestamp_ms\n\
             {SENSOR}\t7\t-5000\t1767225600000\ncopy\t7\t-5000\t1767225600000\n"
        )
    );
}

#[test]
fn a_bad_row_names_its_line_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    ok(engine(
        &["import", "--sensor", "s"],
        dir.path(),
        Some(CSV.as_bytes()),
    ));
    let before = ok(engine(&["export", "--sensor", "s"], dir.path(), None));

    let mut big = String::from("timestamp_ms,value,quality\n");
    for i in 0..200_000 {
        big.push_str(&format!("{},{}.25,192\n", 10_000 + i, i));
    }
    let cases: Vec<(String, &str)> = vec![
        (
            format!("{big}300000,abc,192\n"),
            "line 200002: value \"abc\" is not a number",
        ),
        (format!("{big}300000,1\n"), "line 200002: expected 3 fields"),
        (
            "time,value,quality\n1,1,1\n".into(),
            "line 1: expected the header timestamp_ms,value,quality",
        ),
        (
            format!("{big}1e3,1,192\n"),
            "line 200002: timestamp_ms \"1e3\" is not an integer",
        ),
        (
            format!("{big}253402128000000,1,192\n"),
            "line 200002: timestamp_ms 253402128000000 is outside the supported range",
        ),
        (
            format!("{big}5,1,300\n"),
            "line 200002: quality \"300\" is not an integer from 0 to 255",
        ),
        ("".into(), "line 1: the file is empty"),
    ];
    for (input, expected) in cases {
        let stderr = failure(engine(
            &["import", "--sensor", "s"],
            dir.path(),
            Some(input.as_bytes()),
        ));
        assert!(
            stderr.contains(expected),
            "{stderr:?} should contain {expected:?}"
        );
        assert_eq!(
            ok(engine(&["export", "--sensor", "s"], dir.path(), None)),
            before,
            "after {expected}"
        );
    }
    let mut invalid_utf8 = b"timestamp_ms,value,quality\n1,2,3\n".to_vec();
    invalid_utf8.extend_from_slice(b"2,\xff\xfe,3\n");
    let stderr = failure(engine(
        &["import", "--sensor", "s"],
        dir.path(),
        Some(&invalid_utf8),
    ));
    assert!(
        stderr.contains("line 3: value is not valid UTF-8"),
        "{stderr}"
    );
    assert_eq!(
        ok(engine(&["export", "--sensor", "s"], dir.path(), None)),
        before
    );
    // A new sensor whose import failed does not exist.
    failure(engine(
        &["import", "--sensor", "new"],
        dir.path(),
        Some(b"timestamp_ms,value,quality\n1,x,1\n"),
    ));
    assert_eq!(
        ok(engine(&["sensors"], dir.path(), None)).lines().count(),
        2
    );
}

#[test]
fn export_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = failure(engine(&["export", "--sensor", "missing"], dir.path(), None));
    assert!(stderr.contains("sensor \"missing\" not found"), "{stderr}");
    ok(engine(
        &["import", "--sensor", "s"],
        dir.path(),
        Some(CSV.as_bytes()),
    ));
    let stderr = failure(engine(
        &["export", "--sensor", "s", "--start", "10", "--end", "5"],
        dir.path(),
        None,
    ));
    assert!(stderr.contains("--start is after --end"), "{stderr}");
    let stderr = failure(engine(
        &["export", "--sensor", "s", "--start", "soon"],
        dir.path(),
        None,
    ));
    assert!(
        stderr.contains("neither epoch milliseconds nor an RFC 3339 time"),
        "{stderr}"
    );
    let stderr = failure(engine(
        &["export", "--sensor", "bad\u{7}id"],
        dir.path(),
        None,
    ));
    assert!(stderr.contains("control character"), "{stderr}");
}
