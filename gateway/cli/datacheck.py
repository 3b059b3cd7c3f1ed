"""`pgw check-policy`'s look at the data: every table file of the catalog exists, is a readable Parquet file, and
has every declared column with a type the declared one can read. Only the files' schemas are read, never a row."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sandbox.catalog import Catalog

__all__ = ["data_file_problems"]


def _compatible(declared: str, arrow_type: object) -> bool:
    import pyarrow as pa
    import pyarrow.types as t

    assert isinstance(arrow_type, pa.DataType)
    if t.is_dictionary(arrow_type):
        return _compatible(declared, arrow_type.value_type)
    if declared == "int64":
        return bool(t.is_integer(arrow_type))
    if declared == "float64":
        return bool(t.is_floating(arrow_type) or t.is_integer(arrow_type) or t.is_decimal(arrow_type))
    if declared == "string":
        return bool(t.is_string(arrow_type) or t.is_large_string(arrow_type))
    if declared == "bool":
        return bool(t.is_boolean(arrow_type))
    return False


def data_file_problems(catalog: Catalog) -> list[str]:
    """One line per problem, ``file: key: problem`` (the catalog file and the table's dotted key)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    problems = []
    for dataset in catalog.datasets:
        for table in dataset.tables:
            where = f"{catalog.path}: {table.key}"
            if not table.file.exists():
                problems.append(f"{where}: file {table.file} does not exist (check data_dir or --data-dir)")
                continue
            try:
                schema = pq.read_schema(table.file)
            except (OSError, pa.ArrowException) as exc:
                problems.append(f"{where}: file {table.file} is not a readable Parquet file ({exc})")
                continue
            for column in table.info.columns:
                index = schema.get_field_index(column.name)
                if index < 0:
                    problems.append(f"{where}.columns.{column.name}: no such column in {table.file.name}")
                elif not _compatible(column.type, schema.field(index).type):
                    problems.append(f"{where}.columns.{column.name}: declared {column.type} but "
                                    f"{table.file.name} holds {schema.field(index).type}")
    return problems
