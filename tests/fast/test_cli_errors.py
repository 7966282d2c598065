"""``hsd-fast`` errors: one line ``hsd-fast <subcommand>: error: <message>`` on stderr, exit status 2,
never a traceback; the device and thread count are checked before any model is loaded."""

from __future__ import annotations

import pytest
import torch

from hsd_fast.cli import main
from hsd_fast.tiny import tiny_llama


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A local Hugging Face folder holding a tiny random model and its character tokenizer."""
    path = tmp_path_factory.mktemp("cli") / "tiny"
    model, tok = tiny_llama(0, tokenizer="chars", dtype=torch.float32)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def generate(folder, *extra):
    return ["generate", "--target", str(folder), "--draft", "none", "--max-new-tokens", "2", "--no-eos", "--prompt", "ab", *extra]


def error_lines(err):
    """stderr without the engine's ``#`` description line and the loader's progress bar."""
    return [line for line in err.splitlines() if line.strip() and not line.startswith(("#", "Loading weights"))]


def one_error_line(capsys, subcommand="generate"):
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith(f"hsd-fast {subcommand}: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def no_model_loading(monkeypatch):
    """Loading any model fails the test: the checks must come first."""
    import hsd_fast.engine

    def boom(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(hsd_fast.engine, "SpeculativeDecoder", boom)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_device_without_cuda(folder, capsys, no_model_loading, device):
    assert main(generate(folder, "--device", device)) == 2
    line = one_error_line(capsys)
    assert "--device" in line and "no cuda device" in line


def test_device_index_past_the_devices(folder, capsys, no_model_loading):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    assert main(generate(folder, "--device", f"cuda:{torch.cuda.device_count()}")) == 2
    assert "--device" in one_error_line(capsys)


@pytest.mark.parametrize("device", ["bogus", "cpu:x", ""])
def test_unparsable_device(folder, capsys, no_model_loading, device):
    assert main(generate(folder, "--device", device)) == 2
    assert "--device" in one_error_line(capsys)


@pytest.mark.parametrize("threads", ["0", "-1"])
def test_threads_below_one(folder, capsys, no_model_loading, threads):
    before = torch.get_num_threads()
    assert main(generate(folder, "--threads", threads)) == 2
    assert "--threads: expected an int >= 1" in one_error_line(capsys)
    assert torch.get_num_threads() == before


def test_missing_target(tmp_path, capsys):
    assert main(generate(tmp_path / "nowhere")) == 2
    assert "nowhere" in one_error_line(capsys)


@pytest.mark.parametrize("dtype", ["float7", "int64", "Tensor"])
def test_bad_dtype(folder, capsys, dtype):
    assert main(generate(folder, "--dtype", dtype)) == 2
    assert "dtype" in one_error_line(capsys)


def test_engine_value_error_while_generating(folder, capsys):
    assert main(generate(folder, "--top-k", "0")) == 2  # raised by the engine, after loading
    assert "top_k" in one_error_line(capsys)


def test_os_error_from_the_engine_is_one_line(folder, capsys, monkeypatch):
    import hsd_fast.engine

    def unreadable(*args, **kwargs):
        raise OSError("config.json: permission denied\n  (second line of the loader's message)")

    monkeypatch.setattr(hsd_fast.engine, "SpeculativeDecoder", unreadable)
    assert main(generate(folder)) == 2
    line = one_error_line(capsys)
    assert line == "hsd-fast generate: error: config.json: permission denied; (second line of the loader's message)"


def test_streamed_text_ends_before_the_error_line(folder, capsys, monkeypatch):
    """A ValueError in the middle of a streamed generation: the streamed line is ended, then one error line."""
    from hsd_fast.engine import SpeculativeDecoder

    def failing(self, *args, **kwargs):
        raise ValueError("max_new_tokens: too many for this model")

    monkeypatch.setattr(SpeculativeDecoder, "generate", failing)
    assert main(generate(folder, "--device", "cpu")) == 2
    captured = capsys.readouterr()
    assert captured.out == "ab\n"
    assert error_lines(captured.err) == ["hsd-fast generate: error: max_new_tokens: too many for this model"]


def test_bench_errors_go_through_the_same_path(tmp_path, capsys):
    assert main(["bench", "--tiny", "--threads", "0", "--out", str(tmp_path)]) == 2
    assert "--threads" in one_error_line(capsys, "bench")
    assert main(["bench", "--tiny", "--device", "bogus", "--out", str(tmp_path)]) == 2
    assert "--device" in one_error_line(capsys, "bench")


def test_models_errors_go_through_the_same_path(tmp_path, capsys):
    assert main(["models", "verify", "smollm2-135m", "--cache-dir", str(tmp_path)]) == 2  # a ModelFetchError
    assert "not fetched" in one_error_line(capsys, "models")
