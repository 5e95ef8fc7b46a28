"""Stamp QA: legacy ``stamp_npz`` codec and reject-reason checks; see :mod:`.quality_checks`."""

from dhs_gen.validation.quality_checks import check_stamp, decode_stamp_npz, encode_stamp_npz

__all__ = ["check_stamp", "decode_stamp_npz", "encode_stamp_npz"]
