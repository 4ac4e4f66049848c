"""tfsd.serving.tflite_export: argument checks, atomic no-overwrite writes.

(The report table, `format_report`, is checked with the fallback rows in
tests/test_tflite_fallback.py and through the command in tests/test_tflite.py.)
"""

import pytest

from tfsd.serving import tflite_convert, tflite_export


def test_missing_saved_model_and_unknown_quantization(tmp_path):
    with pytest.raises(tflite_convert.TFLiteError, match="No SavedModel"):
        tflite_export.convert_and_verify(str(tmp_path / "nope"), str(tmp_path / "m.tflite"))
    with pytest.raises(ValueError, match="Unknown quantization 'int4'"):
        tflite_export.convert_and_verify(str(tmp_path), str(tmp_path / "m.tflite"), quantize="int4")
    with pytest.raises(ValueError, match="int8_io needs"):
        tflite_export.convert_and_verify(str(tmp_path), str(tmp_path / "m.tflite"), int8_io=True)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_never_overwritten(tmp_path):
    out = tmp_path / "m.tflite"
    out.write_bytes(b"precious")
    with pytest.raises(tflite_convert.TFLiteError, match="exists; pass --overwrite"):
        tflite_export.convert_and_verify(str(tmp_path / "nope"), str(out))
    with pytest.raises(tflite_convert.TFLiteError, match="exists"):
        tflite_export.write_atomic(str(out), b"new")
    assert out.read_bytes() == b"precious"
    tflite_export.write_atomic(str(out), b"new", overwrite=True)
    assert out.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite"]  # no temporary left
