"""Structures in from every common format, as checked records; cleaned datasets out."""

from tlmat.io.checks import CheckOptions, RawItem, make_record
from tlmat.io.readers import (
    detect_format,
    iter_raw,
    iter_records,
    read_records,
    records_from_structures,
)
from tlmat.io.records import InputError, Problem, ProblemLog, ReadResult, Reason, Record
from tlmat.io.writers import write_csv, write_extxyz

__all__ = [
    "CheckOptions",
    "InputError",
    "Problem",
    "ProblemLog",
    "RawItem",
    "ReadResult",
    "Reason",
    "Record",
    "detect_format",
    "iter_raw",
    "iter_records",
    "make_record",
    "read_records",
    "records_from_structures",
    "write_csv",
    "write_extxyz",
]
