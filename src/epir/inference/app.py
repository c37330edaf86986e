"""``epir app``: a local web demo over a checkpoint (Gradio, the optional extra ``pip install "epir[app]"``).

Tab "Predict a clip": upload a video (or record one from the webcam, where the browser allows) or several frame
images, optionally give the onset and apex frame indices (else the first frame is the onset and the apex is
estimated), and see the predicted class with every class's probability, the explanation figure of
``epir predict --explain``, and the timings of each stage. Tab "Run report": a run directory's ``report.html``.

Everything runs through :class:`epir.inference.Predictor`, so an upload gets exactly the errors ``epir predict``
gives (shown in the page, one line). The server binds 127.0.0.1 unless ``host`` says otherwise.
"""
from __future__ import annotations

import html
import os
import shutil
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

from epir.errors import ConfigError, EpirError
from epir.inference.predictor import Predictor


def _gradio() -> ModuleType:
    """The gradio module, or the error that says how to install it."""
    try:
        import gradio as gr  # noqa: PLC0415 (optional dependency, imported when used)
    except ImportError:
        raise ConfigError('epir app needs Gradio: pip install "epir[app]" (or pip install gradio).') from None
    return gr


def _frames_folder(files: list[Any]) -> Path:
    """Uploaded frame images as a folder of frames (natural order of their names), for the predictor."""
    folder = Path(tempfile.mkdtemp(prefix="epir-frames-"))
    for f in files:
        src = Path(getattr(f, "name", f))
        shutil.copy(src, folder / src.name)
    return folder


def report_frame(run_dir: str | os.PathLike | None) -> str:
    """A run directory's report.html inside an iframe (or a one-line message)."""
    if not run_dir:
        return "<p>Give a run directory (epir loso --out DIR) to show its report.</p>"
    path = Path(str(run_dir)).expanduser() / "report.html"
    if not path.is_file():
        return (f"<p>{html.escape(str(path))} does not exist: give a finished run directory (epir loso, demo, ablate "
                f"or compare write report.html).</p>")
    return (f'<iframe title="run report" style="width:100%;height:1400px;border:0" '
            f'srcdoc="{html.escape(path.read_text(), quote=True)}"></iframe>')


def build_app(checkpoint: str | os.PathLike, run_dir: str | os.PathLike | None = None, *, threads: int | None = 1
              ) -> Any:
    """The Gradio Blocks of the demo (not launched)."""
    gr = _gradio()
    predictor = Predictor.load(checkpoint, threads=threads)

    def index(text: str | None, name: str) -> int | None:
        text = (text or "").strip()
        if not text:
            return None
        try:
            return int(text)
        except ValueError:
            raise gr.Error(f"The {name} must be a frame index (an integer from 0), got {text!r}.") from None

    def predict(video: Any, frames: list[Any] | None, onset: str | None, apex: str | None) -> tuple[Any, ...]:
        clip = video or (_frames_folder(frames) if frames else None)
        if clip is None:
            raise gr.Error("Upload a video (or record one), or frame images.")
        on, ap = index(onset, "onset"), index(apex, "apex")
        try:
            pred = predictor.predict(str(getattr(clip, "name", clip)), on, ap)
            figure = predictor.explain(pred, Path(tempfile.mkdtemp(prefix="epir-explain-")) / "explain.png")
        except (EpirError, ValueError) as e:
            raise gr.Error(str(e)) from None
        timings = {k: f"{v * 1000:.1f} ms" for k, v in pred.timings.items()}
        info = {"predicted": pred.class_name, "onset frame": pred.onset, "apex frame": pred.apex,
                "apex": "estimated" if pred.apex_estimated else "given", "model": predictor.backend_note,
                "timings": timings}
        return pred.probabilities, str(figure), info

    with gr.Blocks(title="epir: micro-expression recognition") as demo:
        gr.Markdown(f"# epir demo\nCheckpoint `{checkpoint}`: {predictor.checkpoint.model_name}, classes "
                    f"{', '.join(predictor.class_names)}.")
        with gr.Tab("Predict a clip"):
            with gr.Row():
                with gr.Column():
                    video = gr.Video(label="Video (upload, or record from the webcam)", sources=["upload", "webcam"],
                                     elem_id="video-input")
                    frames = gr.File(label="...or frame images", file_count="multiple", file_types=["image"])
                    with gr.Row():
                        onset = gr.Textbox(label="onset frame index (empty: the first frame)", value="")
                        apex = gr.Textbox(label="apex frame index (empty: estimated)", value="")
                    button = gr.Button("Predict", variant="primary", elem_id="predict-button")
                with gr.Column():
                    label = gr.Label(label="Predicted class", elem_id="prediction")
                    figure = gr.Image(label="Explanation", type="filepath", elem_id="explanation")
                    details = gr.JSON(label="Onset, apex and timings")
            button.click(predict, [video, frames, onset, apex], [label, figure, details])
        with gr.Tab("Run report"):
            folder = gr.Textbox(label="Run directory", value=str(run_dir or ""))
            show = gr.Button("Show report")
            page = gr.HTML(report_frame(run_dir))
            show.click(report_frame, [folder], [page])
    return demo


def launch(checkpoint: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 7860,
           run_dir: str | os.PathLike | None = None) -> None:
    """Start the demo server (blocks until interrupted) and print its local address."""
    demo = build_app(checkpoint, run_dir)
    print(f"epir app: http://{host}:{port}  (Ctrl+C stops it)", flush=True)
    demo.launch(server_name=host, server_port=port, share=False, quiet=True, show_error=True)


__all__ = ["build_app", "launch", "report_frame"]
