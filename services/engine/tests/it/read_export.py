"""Reads an export file with an independent reader and prints it as JSON.

Usage: read_export.py FORMAT FILE

Readers: pyarrow for parquet and arrow, Python's csv for CSV, json for JSON
Lines, openpyxl for XLSX. The output is {"columns": [...], "rows": [[...]],
"types": {...}, "metadata": {...}} where every float cell is
{"bits": "<16 hex digits>"} (its exact IEEE 754 bits, read from the file's
own buffers for parquet and arrow, so NaN payloads show), an empty cell is
null, integers are integers and text is text.
"""

import csv
import io
import json
import math
import struct
import sys


def float_cell(value):
    return {"bits": "%016x" % struct.unpack("<Q", struct.pack("<d", value))[0]}


def text_number(text):
    """A CSV/JSON value cell: a number, or NaN/inf/-inf written as text."""
    if text in ("NaN", "inf", "-inf", "'-inf"):
        return float_cell(float(text.lstrip("'")))
    return float_cell(float(text.replace(",", ".")))


def read_arrow_table(table):
    import pyarrow as pa

    columns = table.column_names
    types = {f.name: str(f.type) for f in table.schema}
    metadata = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    out_columns = []
    for name in columns:
        field_type = table.schema.field(name).type
        cells = []
        for chunk in table.column(name).chunks:
            if pa.types.is_float64(field_type):
                # The raw values buffer: exact bits, NaN payloads included.
                data = chunk.buffers()[1]
                raw = memoryview(data)[chunk.offset * 8 : (chunk.offset + len(chunk)) * 8]
                bits = struct.unpack("<%dQ" % len(chunk), raw)
                nulls = chunk.is_null().to_pylist()
                for b, null in zip(bits, nulls):
                    cells.append(None if null else {"bits": "%016x" % b})
            elif pa.types.is_timestamp(field_type):
                cells.extend(
                    None if v is None else v for v in chunk.cast(pa.int64()).to_pylist()
                )
            elif pa.types.is_dictionary(field_type):
                cells.extend(chunk.to_pylist())
            else:
                cells.extend(chunk.to_pylist())
        out_columns.append(cells)
    rows = [list(row) for row in zip(*out_columns)] if out_columns else []
    return {"columns": columns, "rows": rows, "types": types, "metadata": metadata}


def read_parquet(path):
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    result = read_arrow_table(table)
    meta = pq.ParquetFile(path).metadata
    result["row_groups"] = meta.num_row_groups
    result["file_metadata"] = {
        k.decode(): v.decode() for k, v in (meta.metadata or {}).items() if k != b"ARROW:schema"
    }
    result["compression"] = sorted(
        {meta.row_group(0).column(c).compression for c in range(meta.num_columns)}
    ) if meta.num_row_groups else []
    return result


def read_arrow(path):
    import pyarrow.ipc as ipc

    with open(path, "rb") as f:
        table = ipc.open_stream(f).read_all()
    return read_arrow_table(table)


def read_csv(path, delimiter):
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter=delimiter))
    header, body = rows[0], rows[1:]
    out = []
    for row in body:
        cells = []
        for name, text in zip(header, row):
            if text == "":
                cells.append(None)
            elif name == "sensor_id":
                cells.append(text)
            elif name in ("timestamp_ms",) or name.endswith("quality") or name.endswith("count"):
                cells.append(int(text))
            elif name in ("time_local", "utc_offset"):
                cells.append(text)
            else:
                cells.append(text_number(text))
        out.append(cells)
    return {"columns": header, "rows": out}


def read_jsonl(path):
    columns = None
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            obj = json.loads(line)
            if columns is None:
                columns = list(obj.keys())
            cells = []
            for name in columns:
                value = obj[name]
                if value is None or name == "sensor_id":
                    cells.append(value)
                elif isinstance(value, str):
                    cells.append(text_number(value))
                elif isinstance(value, float):
                    cells.append(float_cell(value))
                else:
                    cells.append(value)
            rows.append(cells)
    return {"columns": columns or [], "rows": rows}


def read_xlsx(path):
    import openpyxl

    book = openpyxl.load_workbook(path, read_only=True)
    columns = None
    rows = []
    for name in book.sheetnames:
        if name == "Info":
            continue
        sheet_rows = list(book[name].iter_rows(values_only=True))
        header = [c for c in sheet_rows[0]]
        columns = columns or header
        for row in sheet_rows[1:]:
            cells = []
            for col, value in zip(header, list(row) + [None] * (len(header) - len(row))):
                if value is None or col == "sensor_id":
                    cells.append(value)
                elif col == "timestamp_ms" or col.endswith("quality") or col.endswith("count"):
                    cells.append(int(value))
                elif isinstance(value, str):
                    cells.append(text_number(value))
                elif isinstance(value, (int, float)) and not isinstance(value, bool):
                    cells.append(float_cell(float(value)))
                else:
                    cells.append(str(value))
            rows.append(cells)
    info = {}
    if "Info" in book.sheetnames:
        for row in book["Info"].iter_rows(values_only=True):
            info[row[0]] = row[1]
    return {"columns": columns or [], "rows": rows, "info": info}


def main():
    fmt, path = sys.argv[1], sys.argv[2]
    if fmt == "parquet":
        result = read_parquet(path)
    elif fmt == "arrow":
        result = read_arrow(path)
    elif fmt == "csv":
        result = read_csv(path, ",")
    elif fmt == "csv;":
        result = read_csv(path, ";")
    elif fmt == "jsonl":
        result = read_jsonl(path)
    elif fmt == "xlsx":
        result = read_xlsx(path)
    else:
        raise SystemExit("unknown format " + fmt)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
