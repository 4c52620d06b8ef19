#!/usr/bin/env bash
# Opens HTTP exports in a real spreadsheet: LibreOffice Calc (headless)
# imports a default CSV export and an Excel-style one
# (bom=true&delimiter=;&time_zone=Europe/Berlin) and saves them as .xlsx; it
# also converts our own format=xlsx export. openpyxl then reads the three
# workbooks back and checks every cell against the source points. Last, it
# shows what the Excel preset (preset=excel) becomes with English and German
# import settings (the automated check of that is the engine's integration
# test the_excel_preset_opens_in_libreoffice_in_english_and_german).
#
# Needs: curl, LibreOffice Calc (Debian: apt-get install -y libreoffice-calc-nogui),
# Python 3 with openpyxl (pip install openpyxl). Builds and runs `engine` from
# this checkout on a free local port with a temporary data directory.
#
# Usage: scripts/check-excel.sh        (exit 0 when every check passed)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
command -v soffice >/dev/null || { echo "soffice missing: apt-get install -y libreoffice-calc-nogui" >&2; exit 2; }
python3 -c 'import openpyxl' 2>/dev/null || { echo "openpyxl missing: pip install openpyxl" >&2; exit 2; }

work=$(mktemp -d)
server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

(cd "$root" && cargo build -q --bin engine)
target_dir=${CARGO_TARGET_DIR:-$root/target}
engine="$target_dir/debug/engine"

sensor='Kessel Ü1/Temperatur'
# Berlin leaves summer time at 2026-10-25T01:00Z: 02:30 local happens twice.
cat >"$work/points.csv" <<'CSV'
timestamp_ms,value,quality
1792888200000,21.5,192
1792891800000,-0.25,64
1792891800001,0.30000000000000004,192
1792891800002,1e300,192
1792891800003,-0.0,0
1792891800004,5e-324,192
1792891800005,NaN,0
1792891800006,inf,192
1792891800007,-inf,192
1792891800008,123456.789,192
CSV
"$engine" import --data-dir "$work/data" --sensor "$sensor" "$work/points.csv"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$engine" serve --data-dir "$work/data" --http-addr "127.0.0.1:$port" --web-dir "$work/none" >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done

base="http://127.0.0.1:$port/api/v1/export?sensor_id=Kessel%20%C3%9C1%2FTemperatur&start_ts=1792800000000&end_ts=1793000000000"
curl -sSf -o "$work/default.csv" "$base"
curl -sSf -o "$work/excel.csv" "$base&bom=true&delimiter=;&time_zone=Europe/Berlin"
curl -sSf -o "$work/native.xlsx" "$base&format=xlsx&time_zone=Europe/Berlin"

echo "== default export (first lines)"; head -4 "$work/default.csv"
echo "== Excel-style export (first lines, BOM shown as <U+FEFF>)"; head -4 "$work/excel.csv" | sed 's/\xef\xbb\xbf/<U+FEFF>/'

# LibreOffice's CSV filter options: separator (44 ',' or 59 ';'), text
# delimiter 34 '"', charset 76 (UTF-8), first line 1.
lo() { soffice --headless --norestore "-env:UserInstallation=file://$work/lo-profile" "$@" >>"$work/lo.log" 2>&1; }
mkdir -p "$work/out"
lo --infilter="CSV:44,34,76,1" --convert-to xlsx --outdir "$work/out" "$work/default.csv"
lo --infilter="CSV:59,34,76,1" --convert-to xlsx --outdir "$work/out" "$work/excel.csv"
cp "$work/native.xlsx" "$work/out/native-roundtrip-src.xlsx"
lo --convert-to csv --outdir "$work/out" "$work/out/native-roundtrip-src.xlsx"
ls "$work/out"

# The Excel preset, with the locale's separator and decimal mark, imported
# as a spreadsheet user would (special numbers such as dates detected).
curl -sSf -o "$work/preset-en.csv" "$base&preset=excel&time_zone=Europe/Berlin"
curl -sSf -o "$work/preset-de.csv" "$base&preset=excel&delimiter=;&decimal=,&time_zone=Europe/Berlin"
lo --infilter="CSV:44,34,76,1,,1033,false,true,false,false,false,-1,true" --convert-to xlsx --outdir "$work/out" "$work/preset-en.csv"
lo --infilter="CSV:59,34,76,1,,1031,false,true,false,false,false,-1,true" --convert-to xlsx --outdir "$work/out" "$work/preset-de.csv"
for lang in en de; do
  echo "== preset=excel, $lang import settings: cells as LibreOffice typed them"
  python3 -c 'import openpyxl, sys
for row in openpyxl.load_workbook(sys.argv[1]).active.iter_rows():
    print("  ", [(c.value, c.data_type) for c in row])' "$work/out/preset-$lang.xlsx"
done

python3 - "$work" <<'PY'
import math, struct, sys, zipfile
import openpyxl

# Our streamed zip: every part's CRC checks out.
bad = zipfile.ZipFile(f"{sys.argv[1]}/native.xlsx").testzip()
assert bad is None, f"corrupt zip member {bad}"

work = sys.argv[1]
source = [line.split(",") for line in open(f"{work}/points.csv").read().split()[1:]]
expected = [(int(t), float(v), int(q)) for t, v, q in source]
failures = []

def check(name, path, local_time):
    sheet = openpyxl.load_workbook(path).active
    rows = list(sheet.iter_rows(values_only=True))
    header = [c for c in rows[0] if c is not None]
    want_header = ["timestamp_ms", "value", "quality"] + (["time_local"] if local_time else [])
    print(f"\n== {name}: {len(rows) - 1} data rows, header {header}")
    if header != want_header:
        failures.append(f"{name}: header {header!r}")
    for row, (t, v, q) in zip(rows[1:], expected):
        cells = list(row)
        kinds = "/".join(type(c).__name__ for c in cells if c is not None)
        note = ""
        if cells[0] != t:
            failures.append(f"{name}: timestamp {cells[0]!r} != {t}")
        if cells[2] != q:
            failures.append(f"{name}: quality {cells[2]!r} != {q}")
        got = cells[1]
        if math.isfinite(v):
            if not isinstance(got, (int, float)):
                failures.append(f"{name}: value {got!r} for {v!r} is not a number")
            elif float(got) != v:
                note = f"  <- not exact: {float(got)!r} != {v!r}"
            elif struct.pack('<d', float(got)) != struct.pack('<d', v):
                note = "  <- same number, sign of zero lost"
        else:
            note = f"  <- non-finite kept as {type(got).__name__} {got!r}"
        print(f"  {cells}  [{kinds}]{note}")
    if len(rows) - 1 != len(expected):
        failures.append(f"{name}: {len(rows) - 1} rows, expected {len(expected)}")

check("default CSV opened in LibreOffice", f"{work}/out/default.xlsx", False)
check("Excel-style CSV (BOM, ;, Europe/Berlin) opened in LibreOffice", f"{work}/out/excel.xlsx", True)
check("format=xlsx export read by openpyxl", f"{work}/native.xlsx", True)
print("\n== format=xlsx export re-saved as CSV by LibreOffice (it opened it):")
print(open(f"{work}/out/native-roundtrip-src.csv").read())
if failures:
    print("FAILED:\n  " + "\n  ".join(failures))
    sys.exit(1)
print("all checks passed")
PY
