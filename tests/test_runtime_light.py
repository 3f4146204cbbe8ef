import subprocess
import sys


def test_runtime_import_leaves_torch_and_transformers_unimported():
    code = (
        "import sys, edge_downscale.runtime, edge_downscale.runtime.llamacpp, edge_downscale.eval.bpb, "
        "edge_downscale.eval.mc, edge_downscale.runtime.router, edge_downscale.runtime.onnx, "
        "edge_downscale.runtime.ensemble, edge_downscale.runtime.strategies, edge_downscale.runtime.gguf_file, "
        "edge_downscale.runtime.generation, edge_downscale.artifacts\n"
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"runtime imported: {out.stdout.strip()}"


def test_backend_registry_is_lazy_and_complete():
    from edge_downscale.errors import ConfigError
    from edge_downscale.runtime import BACKENDS, Backend, backend_class

    assert {"llamacpp", "torch"} <= set(BACKENDS)
    assert issubclass(backend_class("llamacpp"), Backend)
    try:
        backend_class("nope")
    except ConfigError as e:
        assert "llamacpp" in str(e)
    else:
        raise AssertionError("unknown backend accepted")
