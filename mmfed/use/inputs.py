"""One record given on the command line (`mmfed predict --image F --text "..."`), made into the same
Sample a manifest row becomes, so that it goes through the same decoding and processing: each file is
checked and decoded in full by the manifest's own file check (mmfed.data.file_probe), within the limits of
the folder it is in, before the model sees it. A modality the record lacks is masked, as in a manifest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from mmfed.data.file_probe import check_file
from mmfed.data.manifest import Sample
from mmfed.data.tabular import TabularProcessor, parse_cell
from mmfed.errors import MMFedError
from mmfed.use.model_file import GlobalModel

INPUT_ID = "input"
FILE_OPTIONS = {"image": "--image", "audio": "--audio", "video": "--video"}


@dataclass(frozen=True)
class Inputs:
    image: Path | None = None
    audio: Path | None = None
    video: Path | None = None
    text: str | None = None
    text_file: Path | None = None
    tabular: str | None = None

    def given(self) -> list[str]:
        """The modalities given, in the order of the options."""
        has = {
            "image": self.image is not None,
            "audio": self.audio is not None,
            "text": self.text is not None or self.text_file is not None,
            "video": self.video is not None,
            "tabular": self.tabular is not None,
        }
        return [m for m, present in has.items() if present]

    def any(self) -> bool:
        return bool(self.given())


def _option(modality: str) -> str:
    return {"text": "--text/--text-file", "tabular": "--tabular"}.get(
        modality, FILE_OPTIONS.get(modality, "")
    )


def _file(modality: str, path: Path) -> Path:
    """The file checked and decoded as a manifest's cell is (the same messages), or MMFedError naming it."""
    option = FILE_OPTIONS[modality]
    path = Path(path)
    if not path.exists():
        raise MMFedError(f"{option} {path}: no such file")
    if path.is_dir():
        raise MMFedError(f"{option} {path}: is a folder; give the {modality} file itself")
    real = path.resolve()
    checked, problem = check_file(real.parent, real.name, modality)
    if problem or checked is None:
        raise MMFedError(f"{option} {path}: {problem}")
    return checked


def _text(inputs: Inputs) -> str:
    if inputs.text is not None and inputs.text_file is not None:
        raise MMFedError("--text and --text-file: give one of them")
    if inputs.text_file is not None:
        path = Path(inputs.text_file)
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except FileNotFoundError:
            raise MMFedError(f"--text-file {path}: no such file") from None
        except IsADirectoryError:
            raise MMFedError(f"--text-file {path}: is a folder; give the text file itself") from None
        except OSError as exc:
            raise MMFedError(f"--text-file {path}: cannot be read ({exc.strerror or exc})") from None
        except UnicodeDecodeError:
            raise MMFedError(f"--text-file {path}: not UTF-8 text; save it as UTF-8") from None
        where = f"--text-file {path}"
    else:
        text, where = str(inputs.text), "--text"
    if "\0" in text:
        raise MMFedError(f"{where}: holds NUL bytes (UTF-16?); save it as UTF-8")
    text = text.strip()
    if not text:
        raise MMFedError(f"{where}: the text is empty; leave the option out if the record has no text")
    return text


def _tabular(gm: GlobalModel, cell: str) -> str:
    """'age=54,sex=M' (or ';' between fields, as a manifest writes it) checked as a manifest cell is."""
    cell = ";".join(part.strip() for part in re.split(r"[;,]", cell) if part.strip())
    fields, problem = parse_cell(cell)
    spec = gm.task.data.tabular
    known = [name for name, _ in spec.numeric] + [name for name, _ in spec.categorical]
    problem = problem or TabularProcessor(spec).problem(cell)
    unknown = [name for name in fields if name not in known]
    if not problem and unknown:
        problem = f"{', '.join(map(repr, unknown))} is not a feature of the model"
    if problem or not fields:
        raise MMFedError(
            f"--tabular: {problem or 'no name=value pair'}; the model's features are "
            f'{", ".join(known)} (e.g. --tabular "{known[0] if known else "age"}=54")'
        )
    return cell


def input_sample(gm: GlobalModel, inputs: Inputs) -> Sample:
    """The record as a Sample (label unknown: 0), every part checked; a modality the model does not have
    is refused, naming it and the model's modalities."""
    given = inputs.given()
    takes = ", ".join(gm.modalities)
    if not given:
        options = ", ".join(_option(m) for m in gm.modalities)
        raise MMFedError(
            f"no input given; the model ({gm.task.name}) takes {takes}: give {options}, or --site"
        )
    lacking = [m for m in given if m not in gm.modalities]
    if lacking:
        raise MMFedError(
            f"{', '.join(_option(m) for m in lacking)}: the model ({gm.task.name}) has no "
            f"{', '.join(lacking)} modality; it takes {takes}"
        )
    fields: dict[str, object] = {}
    for modality in FILE_OPTIONS:
        path = getattr(inputs, modality)
        if path is not None:
            fields[modality] = _file(modality, path)
    if "text" in given:
        fields["text"] = _text(inputs)
    if inputs.tabular is not None:
        fields["tabular"] = _tabular(gm, inputs.tabular)
    return Sample(id=INPUT_ID, label=0, split="", **fields)
