"""Data files of the ``sk-cae`` command: CSV and Parquet tables read whole or
in chunks, checked columns and labels, and score tables written in chunks.

pandas is imported inside the functions, and pyarrow only for Parquet files,
so that importing this module needs neither.
"""

import os
import sys

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

# Column names listed in full in an error message before the list is cut.
LISTED_COLUMNS = 40


class CommandError(Exception):
    """An error that the person running the command can fix.

    ``main`` prints its message on stderr, without a traceback, and returns 2.
    """


def import_pandas():
    try:
        import pandas
    except ImportError as error:
        raise CommandError(
            "Reading data files needs pandas: pip install 'sk-cae[cli]'."
        ) from error
    return pandas


def table_format(path):
    """Return "csv" or "parquet" from the file name."""
    name = os.path.basename(path).lower()
    for compression in (".gz", ".bz2", ".zip", ".xz", ".zst"):
        name = name.removesuffix(compression)
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    raise CommandError(
        f"{path}: cannot tell the file format from its name; expected a .csv "
        "file (compressed ones such as .csv.gz too) or a .parquet file."
    )


def check_readable(path, what="data file"):
    if not os.path.exists(path):
        raise CommandError(f"{path}: no such {what}.")
    if os.path.isdir(path):
        raise CommandError(f"{path} is a directory; expected a {what}.")


def _parquet_file(path):
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as error:
        raise CommandError(
            "Reading Parquet files needs pyarrow: pip install 'sk-cae[parquet]'."
        ) from error
    try:
        return pyarrow.parquet.ParquetFile(path)
    except (pyarrow.ArrowException, OSError) as error:
        raise CommandError(
            f"{path} is not a readable Parquet file ({error})."
        ) from error


def _csv_errors(pandas):
    return (pandas.errors.ParserError, pandas.errors.EmptyDataError, UnicodeError)


def columns_of(path):
    """Return the column names of a data file without reading its rows."""
    check_readable(path)
    if table_format(path) == "parquet":
        return list(_parquet_file(path).schema_arrow.names)
    pandas = import_pandas()
    try:
        return list(pandas.read_csv(path, nrows=0).columns)
    except _csv_errors(pandas) as error:
        raise CommandError(f"{path} cannot be read as CSV ({error}).") from error


def read_table(path, text_columns):
    """Read a whole data file; ``text_columns`` of a CSV file are read as text."""
    pandas = import_pandas()
    if table_format(path) == "parquet":
        return _parquet_file(path).read().to_pandas()
    try:
        return pandas.read_csv(path, dtype=dict.fromkeys(text_columns, str))
    except _csv_errors(pandas) as error:
        raise CommandError(f"{path} cannot be read as CSV ({error}).") from error


def read_chunks(path, columns, text_columns, chunk_rows):
    """Yield the ``columns`` of a data file as DataFrames of at most
    ``chunk_rows`` rows, so that memory does not grow with the file."""
    pandas = import_pandas()
    if table_format(path) == "parquet":
        batches = _parquet_file(path).iter_batches(
            batch_size=chunk_rows, columns=columns
        )
        for batch in batches:
            yield batch.to_pandas()
        return
    reader = pandas.read_csv(
        path,
        usecols=columns,
        dtype=dict.fromkeys(text_columns, str),
        chunksize=chunk_rows,
    )
    with reader:
        try:
            yield from reader
        except _csv_errors(pandas) as error:
            raise CommandError(f"{path} cannot be read as CSV ({error}).") from error


def require_columns(path, available, required):
    """Raise a CommandError naming each missing column and listing the
    columns that ``path`` has; ``required`` maps column names to their role."""
    missing = [
        f"{name!r} ({role})" for name, role in required.items() if name not in available
    ]
    if not missing:
        return
    shown = ", ".join(repr(name) for name in available[:LISTED_COLUMNS])
    if len(available) > LISTED_COLUMNS:
        shown += f", ... ({len(available)} columns in all)"
    raise CommandError(
        f"{path} has no column {' and no column '.join(missing)}. "
        f"Its columns are: {shown or 'none'}."
    )


def _label_number(defect_value):
    """Return ``defect_value`` as a number, or None if it is not one."""
    try:
        return float(defect_value)
    except ValueError:
        return {"true": 1.0, "false": 0.0}.get(defect_value.strip().lower())


def defect_mask(labels, defect_value):
    """Return a boolean array, True where a label equals ``defect_value``.

    A label matches when its text equals the value, or when both are numbers
    (or booleans) with equal values, so ``--defect-value 1`` matches ``1``,
    ``1.0`` and ``True``. Empty labels never match.
    """
    pandas = import_pandas()
    present = labels.notna().to_numpy()
    text = labels.astype(str).str.strip()
    mask = text.to_numpy() == defect_value.strip()
    number = _label_number(defect_value)
    if number is not None:
        if pandas.api.types.is_bool_dtype(labels):
            numbers = labels.astype("float64")
        else:
            # Labels read as text keep "True"/"False"; count them as 1 and 0.
            booleans = text.str.lower().map({"true": 1.0, "false": 0.0})
            numbers = pandas.to_numeric(labels, errors="coerce").astype("float64")
            numbers = numbers.fillna(booleans.astype("float64"))
        mask |= (numbers == number).to_numpy(dtype=bool, na_value=False)
    return mask & present


def label_values(values):
    """Return up to 10 distinct labels of ``values`` for an error message."""
    distinct = sorted({str(value) for value in values})
    if not distinct:
        return "none, every label is empty"
    shown = ", ".join(repr(value) for value in distinct[:10])
    return shown + (", ..." if len(distinct) > 10 else "")


# Share of a text column's values that must parse as numbers (or dates) for
# the column to count as a numeric (or date) column with a few bad cells.
MOSTLY_PARSED = 0.9


def _reject_mistyped_text(pandas, column, name, path):
    """Raise a CommandError for a text column that is really numbers with a
    few bad cells, or dates, instead of one-hot encoding it silently."""
    present = column[column.notna()]
    if present.empty or isinstance(column.dtype, pandas.CategoricalDtype):
        return
    numbers = pandas.to_numeric(present, errors="coerce")
    # A text column of numbers only (zero-padded codes in a Parquet file, for
    # example) is text on purpose and stays categorical.
    if MOSTLY_PARSED <= numbers.notna().mean() < 1:
        position = int(np.argmax(numbers.isna().to_numpy()))
        raise CommandError(
            f"The column {name!r} of {path} holds numbers except for "
            f"{present.iloc[position]!r} in data row {present.index[position] + 1}"
            " (and any like it); fix or empty those cells so the column is used "
            f"as numbers, or leave it out with --ignore-column {name!r}."
        )
    dates = pandas.to_datetime(present, errors="coerce", format="ISO8601")
    if dates.notna().mean() >= MOSTLY_PARSED:
        raise CommandError(
            f"The column {name!r} of {path} contains dates, which the model "
            f"cannot use; leave it out with --ignore-column {name!r}, or replace "
            "it with numbers such as the hour or the day of the week."
        )


def split_feature_columns(pandas, frame, path):
    """Return ``(numeric, categorical)`` column names of the feature columns."""
    numeric, categorical = [], []
    types = pandas.api.types
    for name in frame.columns:
        column = frame[name]
        if column.isna().all():
            raise CommandError(
                f"The column {name!r} of {path} is empty in every row; leave it "
                f"out with --ignore-column {name!r}."
            )
        if types.is_bool_dtype(column) or (
            types.is_numeric_dtype(column) and not types.is_complex_dtype(column)
        ):
            numeric.append(name)
        elif (
            types.is_object_dtype(column)
            or types.is_string_dtype(column)
            or isinstance(column.dtype, pandas.CategoricalDtype)
        ):
            _reject_mistyped_text(pandas, column, name, path)
            categorical.append(name)
        else:
            raise CommandError(
                f"The column {name!r} of {path} contains {column.dtype} values, "
                f"which the model cannot use; leave it out with --ignore-column "
                f"{name!r}, or convert it to numbers first."
            )
    return numeric, categorical


def prepare_features(pandas, frame, columns, categorical, path, first_row):
    """Return the feature columns of ``frame`` in the model's order: text
    columns as objects with NaN for missing values, the others as float64.

    A value that is not a number in a numeric column raises a CommandError
    with its row number (1 for the first data row of the file).
    """
    features = {}
    for name in columns:
        values = frame[name]
        if name in categorical:
            features[name] = values.astype(object).where(values.notna(), np.nan)
            continue
        if pandas.api.types.is_bool_dtype(values):
            features[name] = values.astype("float64")
            continue
        numbers = pandas.to_numeric(values, errors="coerce")
        invalid = (numbers.isna() & values.notna()).to_numpy()
        if invalid.any():
            position = int(np.argmax(invalid))
            raise CommandError(
                f"The column {name!r} of {path} contains {values.iloc[position]!r} in "
                f"data row {first_row + position + 1}, where the model expects a "
                "number."
            )
        features[name] = numbers.astype("float64")
    return pandas.DataFrame(features, index=frame.index)


class ScoreWriter:
    """Writes score tables chunk by chunk, as CSV (a file or stdout) or as
    Parquet, into a temporary file that is renamed when complete."""

    def __init__(self, out, id_column):
        self.out = out
        self.id_column = id_column
        self.to_stdout = out in (None, "-")
        self.is_parquet = not self.to_stdout and table_format(out) == "parquet"
        self.partial = None if self.to_stdout else f"{out}.partial"
        self.parquet_writer = None
        self.n_written = 0
        if self.is_parquet:
            try:
                import pyarrow.parquet  # noqa: F401
            except ImportError as error:
                raise CommandError(
                    "Writing Parquet files needs pyarrow: "
                    "pip install 'sk-cae[parquet]'."
                ) from error

    def write(self, frame):
        if self.is_parquet:
            self._write_parquet(frame)
        else:
            frame.to_csv(
                sys.stdout if self.to_stdout else self.partial,
                mode="a" if self.n_written else "w",
                header=self.n_written == 0,
                index=False,
            )
        self.n_written += len(frame)

    def _write_parquet(self, frame):
        import pyarrow
        import pyarrow.parquet

        if self.parquet_writer is None:
            fields = [("score", pyarrow.float64()), ("flag", pyarrow.int8())]
            if self.id_column:
                fields.insert(0, (self.id_column, pyarrow.string()))
            self.schema = pyarrow.schema(fields)
            self.parquet_writer = pyarrow.parquet.ParquetWriter(
                self.partial, self.schema
            )
        table = pyarrow.Table.from_pandas(
            frame, schema=self.schema, preserve_index=False
        )
        self.parquet_writer.write_table(table)

    def finish(self, pandas):
        if self.n_written == 0:
            empty = pandas.DataFrame(columns=self._columns())
            self.write(empty.astype({"score": "float64", "flag": "int8"}))
        if self.parquet_writer is not None:
            self.parquet_writer.close()
        if self.partial is not None:
            os.replace(self.partial, self.out)

    def abandon(self):
        if self.parquet_writer is not None:
            self.parquet_writer.close()
        if self.partial is not None and os.path.exists(self.partial):
            os.remove(self.partial)

    def _columns(self):
        return ([self.id_column] if self.id_column else []) + ["score", "flag"]


def categorical_columns(model):
    """Return the columns that a model's first step one-hot encodes."""
    first = model.steps[0][1] if isinstance(model, Pipeline) else None
    if not isinstance(first, ColumnTransformer):
        return []
    columns = []
    for _, transformer, selected in first.transformers_:
        if isinstance(transformer, Pipeline):
            transformer = transformer.steps[0][1]
        if isinstance(transformer, OneHotEncoder):
            columns.extend(selected)
    return columns


def model_columns(model, path, available, excluded):
    """Return the feature columns that ``model`` reads from ``path``."""
    names = getattr(model, "feature_names_in_", None)
    if names is not None:
        names = [str(name) for name in names]
        require_columns(path, available, dict.fromkeys(names, "a model feature"))
        return names
    pandas = import_pandas()
    # The first rows are enough to tell numeric columns from text ones.
    header = next(read_chunks(path, None, [], 1000), pandas.DataFrame())
    candidates = [
        name
        for name in header.columns
        if name not in excluded and pandas.api.types.is_numeric_dtype(header[name])
    ]
    if len(candidates) != model.n_features_in_:
        raise CommandError(
            f"The model was trained on {model.n_features_in_} unnamed features, "
            f"but {path} has {len(candidates)} numeric columns besides "
            f"{', '.join(map(repr, excluded)) or 'the excluded ones'}: "
            f"{candidates[:LISTED_COLUMNS]}."
        )
    return candidates
