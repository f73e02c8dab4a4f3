"""The profile's data as datasets other trainers load unchanged: TRL's unpaired (KTO) and paired (DPO) formats and LLaMA-Factory's, with the peer pool as an unlabeled file beside them."""

from __future__ import annotations

import json
from pathlib import Path

DATASET_FORMATS = ("kto-jsonl", "dpo-jsonl", "llamafactory")


def _conversation(role: str, text: str) -> list[dict]:
    return [{"role": role, "content": text}]


def _write_jsonl(path: Path, rows) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def dataset_files(folder: Path, slug: str, data, wanted) -> tuple[list[Path], dict[str, str]]:
    """The profile's data (:func:`idiolect.core.training.labels.preference_data`) as datasets for other trainers:

    - ``kto-jsonl``: TRL's unpaired preference format, conversational (``prompt`` / ``completion`` as messages,
      ``label`` true for your writing, thumbs-up and edits, false for thumbs-down), for ``KTOTrainer`` /
      ``BCOTrainer``;
    - ``dpo-jsonl``: TRL's paired format (``prompt`` / ``chosen`` / ``rejected``), for ``DPOTrainer``;
    - ``llamafactory``: a folder with ``dataset_info.json`` naming a KTO set (sharegpt ``messages`` +
      ``kto_tag``) and a ranking set (``conversations`` + ``chosen`` / ``rejected``), for ``dataset_dir``;

    and, with any of them, the peer pool as ``{slug}-peers-unlabeled.jsonl`` (TRL prompt-completion rows): neither
    TRL's nor LLaMA-Factory's formats have a place for unlabeled texts, so they sit beside the datasets for a
    trainer that takes them (C-BPO, BCO's density-ratio classifier)."""
    files: list[Path] = []
    skipped: dict[str, str] = {}
    if "kto-jsonl" in wanted:
        rows = (
            {"prompt": _conversation("user", r["prompt"]), "completion": _conversation("assistant", r["completion"]),
             "label": r["label"]}
            for r in data.unpaired
        )  # fmt: skip
        files.append(_write_jsonl(folder / f"{slug}-kto.jsonl", rows))
    if "dpo-jsonl" in wanted:
        if data.pairs:
            rows = (
                {"prompt": _conversation("user", r["prompt"]), "chosen": _conversation("assistant", r["chosen"]),
                 "rejected": _conversation("assistant", r["rejected"])}
                for r in data.pairs
            )  # fmt: skip
            files.append(_write_jsonl(folder / f"{slug}-dpo.jsonl", rows))
        else:
            skipped["dpo-jsonl"] = (
                "no pairs yet: edit a generation, or rate a thumbs-down answer to a prompt you also wrote or "
                "liked an answer to"
            )
    if "llamafactory" in wanted:
        sub = folder / f"{slug}-llamafactory"
        sub.mkdir(exist_ok=True)
        kto = [
            {"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}],
             "kto_tag": r["label"]}
            for r in data.unpaired
        ]  # fmt: skip
        ranking = [
            {"conversations": [{"from": "human", "value": r["prompt"]}],
             "chosen": {"from": "gpt", "value": r["chosen"]}, "rejected": {"from": "gpt", "value": r["rejected"]}}
            for r in data.pairs
        ]  # fmt: skip
        tags = {
            "role_tag": "role",
            "content_tag": "content",
            "user_tag": "user",
            "assistant_tag": "assistant",
        }
        info = {
            f"{slug}_kto": {"file_name": f"{slug}_kto.json", "formatting": "sharegpt",
                            "columns": {"messages": "messages", "kto_tag": "kto_tag"}, "tags": tags},
        }  # fmt: skip
        (sub / f"{slug}_kto.json").write_text(json.dumps(kto, indent=1, ensure_ascii=False), encoding="utf-8")
        files.append(sub / f"{slug}_kto.json")
        if ranking:
            info[f"{slug}_dpo"] = {"file_name": f"{slug}_dpo.json", "formatting": "sharegpt", "ranking": True,
                                   "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}}  # fmt: skip
            (sub / f"{slug}_dpo.json").write_text(
                json.dumps(ranking, indent=1, ensure_ascii=False), encoding="utf-8"
            )
            files.append(sub / f"{slug}_dpo.json")
        (sub / "dataset_info.json").write_text(
            json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        files.append(sub / "dataset_info.json")
    if files and data.unlabeled:
        rows = (
            {"prompt": _conversation("user", r["prompt"]), "completion": _conversation("assistant", r["completion"])}
            for r in data.unlabeled
        )  # fmt: skip
        files.append(_write_jsonl(folder / f"{slug}-peers-unlabeled.jsonl", rows))
    return files, skipped
