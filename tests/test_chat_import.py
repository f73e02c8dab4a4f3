"""Chat histories and feedback datasets from other tools: exports written here in the shapes ChatGPT, Claude,
Open WebUI, OpenAI-style JSONL, TRL and LLaMA-Factory write (multi-turn, branches and regenerations,
attachments, empty and system messages), imported with counts and skipped rows asserted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT

from idiolect.core.ingest.chat_text import own_words
from idiolect.core.ingest.samples import import_samples

MINE_1 = "I would rather walk to the market on Saturday mornings, because the light is better then."
MINE_2 = "Honestly the second recipe worked, although I cut the sugar by half and it was still sweet."
DRAFT = "I would prefer walking to the market, the light is nicer (a draft I edited away)."
ANSWER_1 = "Saturday mornings are a fine time for the market; the stalls are fullest before ten."


def _node(mid, role, parts, parent, children, *, ctype="text", hidden=False, attachments=0):
    meta = {"is_visually_hidden_from_conversation": True} if hidden else {}
    if attachments:
        meta["attachments"] = [{"id": f"file-{i}", "name": f"photo{i}.jpg"} for i in range(attachments)]
    if role == "assistant":
        meta["model_slug"] = "gpt-4o"
    return {
        "id": mid,
        "message": {
            "id": mid,
            "author": {"role": role, "name": None, "metadata": {}},
            "create_time": 1700000000.0,
            "content": {"content_type": ctype, "parts": parts},
            "metadata": meta,
            "recipient": "all",
        },
        "parent": parent,
        "children": children,
    }


def chatgpt_export() -> list[dict]:
    code_turn = (
        "Why does this fail? I have tried everything I can think of and I am stuck.\n\n"
        "```python\nimport os\nos.remove('x')\n```\n"
        'Traceback (most recent call last):\n  File "a.py", line 2, in <module>\n'
        "FileNotFoundError: [Errno 2] No such file or directory: 'x'"
    )
    mapping = {
        "root": {"id": "root", "message": None, "parent": None, "children": ["sys"]},
        "sys": _node("sys", "system", [""], "root", ["ctx"], hidden=True),
        "ctx": {
            **_node("ctx", "user", [], "sys", ["u1draft", "u1"], hidden=True),
            "message": {
                "id": "ctx",
                "author": {"role": "user"},
                "content": {
                    "content_type": "user_editable_context",
                    "user_profile": "I am a baker",
                    "user_instructions": "Be brief",
                },
                "metadata": {"is_visually_hidden_from_conversation": True},
            },
        },  # fmt: skip
        "u1draft": _node("u1draft", "user", [DRAFT], "ctx", ["a1draft"]),
        "a1draft": _node("a1draft", "assistant", ["An answer to the draft."], "u1draft", []),
        "u1": _node("u1", "user", [MINE_1], "ctx", ["a1"]),
        "a1": _node("a1", "assistant", [ANSWER_1], "u1", ["u2"]),
        "u2": _node(
            "u2",
            "user",
            [{"content_type": "image_asset_pointer", "asset_pointer": "file-service://x"}, MINE_2],
            "a1",
            ["tool"],
            ctype="multimodal_text",
            attachments=1,
        ),  # fmt: skip
        "tool": {
            **_node("tool", "assistant", [], "u2", ["a2"]),
            "message": {
                "id": "tool",
                "author": {"role": "assistant"},
                "content": {"content_type": "code", "language": "python", "text": "print(1)"},
                "metadata": {},
            },
        },  # fmt: skip
        "a2": _node("a2", "assistant", ["Halving the sugar is common."], "tool", ["u3"]),
        "u3": _node(
            "u3",
            "user",
            [{"content_type": "image_asset_pointer"}],
            "a2",
            ["u4"],
            ctype="multimodal_text",
            attachments=1,
        ),  # fmt: skip
        "u4": _node("u4", "user", ["thanks!"], "u3", ["u5"]),
        "u5": _node("u5", "user", [code_turn], "u4", ["u6"]),
        "u6": _node("u6", "user", [""], "u5", []),
    }
    second = {
        "title": "Weekend plans",
        "mapping": {
            "r": {"id": "r", "message": None, "parent": None, "children": ["x"]},
            "x": _node(
                "x", "user", ["The weekend will be quiet, I plan to read and sleep in late."], "r", []
            ),
        },
        "current_node": "x",
    }
    return [{"title": "Market & baking", "create_time": 1700000000.0, "mapping": mapping, "current_node": "u6",
             "conversation_id": "c1"}, second, {"title": "broken", "mapping": {"r": "not a node"},
                                                "current_node": "r"}]  # fmt: skip


def test_chatgpt_export_takes_your_turns_on_the_branch_you_kept(tmp_path, store):
    f = tmp_path / "conversations.json"
    f.write_text(json.dumps(chatgpt_export()))
    [report] = import_samples(store, "me", [f])
    assert report.format == "chatgpt"
    samples = store.list_samples(store.get_profile("me")["id"])
    texts = [s["text"] for s in samples]
    assert MINE_1 in texts and MINE_2 in texts
    assert DRAFT not in texts  # the edited-away draft lives on another branch
    assert "I am a baker" not in " ".join(texts)  # custom instructions are not your writing
    assert "The weekend will be quiet, I plan to read and sleep in late." in texts
    code = next(t for t in texts if t.startswith("Why does this fail?"))
    assert code == "Why does this fail? I have tried everything I can think of and I am stuck."
    assert report.added == 4
    reasons = {s.where.split(" turn ")[-1]: s.reason for s in report.skipped if " turn " in s.where}
    assert reasons["3"] == "no text (only an attachment)"
    assert reasons["4"] == "fewer than 4 words"
    assert reasons["6"] == "empty message"
    assert any(s.where.startswith("item 3") for s in report.skipped)  # the broken conversation, one row
    assert report.left_out == {"code": 4, "log": 3}
    second = next(s for s in samples if s["text"] == MINE_2)
    assert second["prompt"] == ANSWER_1 and second["context"] == "Market & baking"
    first = next(s for s in samples if s["text"] == MINE_1)
    assert first["prompt"] is None  # nothing was answered yet
    assert "left out of your chat turns" in "\n".join(report.lines())


def test_claude_export_leaves_attachments_out(tmp_path, store):
    data = [{
        "uuid": "c1", "name": "Letter to the council", "created_at": "2025-01-01T00:00:00Z",
        "chat_messages": [
            {"uuid": "m1", "sender": "human", "text": "", "content": [{"type": "text", "text": MINE_1}],
             "attachments": [{"file_name": "notes.txt", "extracted_content": "NOT MINE " * 20}], "files": []},
            {"uuid": "m2", "sender": "assistant", "text": ANSWER_1, "content": [{"type": "text", "text": ANSWER_1}]},
            {"uuid": "m3", "sender": "human", "text": MINE_2, "content": []},
            {"uuid": "m4", "sender": "human", "text": "", "content": [], "files": [{"file_name": "a.png"}]},
        ],
    }]  # fmt: skip
    f = tmp_path / "claude.json"
    f.write_text(json.dumps(data))
    [report] = import_samples(store, "me", [f])
    assert report.format == "claude" and report.added == 2
    texts = [s["text"] for s in store.list_samples(store.get_profile("me")["id"])]
    assert texts == [MINE_1, MINE_2] and "NOT MINE" not in " ".join(texts)
    assert [s.reason for s in report.skipped] == ["no text (only an attachment)"]


def openwebui_chat() -> dict:
    msgs = {
        "s": {"id": "s", "parentId": None, "childrenIds": ["u1"], "role": "system", "content": "Be nice."},
        "u1": {"id": "u1", "parentId": "s", "childrenIds": ["a1", "a1b"], "role": "user", "content": MINE_1},
        "a1": {"id": "a1", "parentId": "u1", "childrenIds": [], "role": "assistant", "model": "llama3:8b",
               "content": "A first answer that the user regenerated.", "annotation": {"rating": -1}},
        "a1b": {"id": "a1b", "parentId": "u1", "childrenIds": ["u2"], "role": "assistant", "model": "llama3:8b",
                "content": ANSWER_1, "annotation": {"rating": 1, "tags": ["helpful"]}},
        "u2": {"id": "u2", "parentId": "a1b", "childrenIds": [], "role": "user", "content": MINE_2,
               "files": [{"type": "image", "url": "data:..."}]},
    }  # fmt: skip
    return {"id": "chat1", "title": "Market", "chat": {"title": "Market", "models": ["llama3:8b"],
            "history": {"messages": msgs, "currentId": "u2"}, "messages": list(msgs.values())}}  # fmt: skip


def test_openwebui_export_gives_samples_and_its_thumbs_as_ratings(tmp_path, store):
    f = tmp_path / "chat-export.json"
    f.write_text(json.dumps([openwebui_chat()]))
    [report] = import_samples(store, "me", [f])
    assert (report.format, report.added, report.ratings) == ("openwebui", 2, 2)
    pid = store.get_profile("me")["id"]
    feedback = {f["text"]: (f["rating"], f["prompt"], f["model"]) for f in store.list_feedback(pid)}
    assert feedback[ANSWER_1] == (1, MINE_1, "llama3:8b")
    assert feedback["A first answer that the user regenerated."][0] == -1  # rated on another branch
    # Importing it again adds nothing; undoing the import takes the ratings back with the samples.
    [again] = import_samples(store, "me", [f])
    assert (again.added, again.duplicates, again.ratings, again.rating_duplicates) == (0, 2, 0, 2)
    store.undo_import(pid, report.import_id)
    assert store.list_feedback(pid) == [] and store.list_samples(pid) == []


def test_openwebui_feedback_export(tmp_path, store):
    chat = openwebui_chat()["chat"]
    rows = [
        {"id": "f1", "type": "rating", "data": {"rating": 1, "model_id": "llama3:8b"},
         "meta": {"chat_id": "chat1", "message_id": "a1b"}, "snapshot": {"chat": {"chat": chat}}},
        {"id": "f2", "type": "rating", "data": {"rating": 1}, "meta": {"message_id": "gone"},
         "snapshot": {"chat": {"chat": chat}}},
    ]  # fmt: skip
    f = tmp_path / "feedback-history-export.json"
    f.write_text(json.dumps(rows))
    [report] = import_samples(store, "me", [f])
    assert (report.format, report.added, report.ratings) == ("openwebui-feedback", 0, 1)
    assert [s.reason for s in report.skipped] == ["the rated message is not in the feedback's chat snapshot"]


def test_openai_chat_jsonl_with_a_bad_line(tmp_path, store):
    rows = [
        {"messages": [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": MINE_1},
                      {"role": "assistant", "content": ANSWER_1},
                      {"role": "user", "content": [{"type": "text", "text": MINE_2},
                                                   {"type": "image_url", "image_url": {"url": "x"}}]}]},
    ]  # fmt: skip
    f = tmp_path / "chats.jsonl"
    f.write_text(json.dumps(rows[0]) + "\n{not json\n" + json.dumps({"messages": "oops"}) + "\n")
    [report] = import_samples(store, "me", [f])
    assert (report.format, report.added) == ("openai-chat", 2)
    assert [s.where for s in report.skipped] == ["line 2", "line 3"]


def test_trl_and_llamafactory_datasets_become_ratings(tmp_path, store):
    unpaired = tmp_path / "kto.jsonl"
    unpaired.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"prompt": "Describe rain.", "completion": "Rain taps the tin roof like fingers.", "label": True},
                {"prompt": [{"role": "user", "content": "Describe snow."}],
                 "completion": [{"role": "assistant", "content": "Snow is frozen water."}], "label": False},
                {"prompt": "x", "completion": "y y y", "label": "maybe"},
            ]
        )
    )  # fmt: skip
    paired = tmp_path / "dpo.jsonl"
    paired.write_text(json.dumps({"prompt": "Describe fog.", "chosen": "Fog erases the far shore.",
                                  "rejected": "Fog is a cloud at ground level."}))  # fmt: skip
    lf = tmp_path / "lf.json"
    lf.write_text(json.dumps([
        {"instruction": "Describe wind.", "input": "", "output": "Wind combs the barley flat.", "kto_tag": True},
        {"messages": [{"role": "user", "content": "Describe hail."},
                      {"role": "assistant", "content": "Hail is ice."}], "kto_tag": False},
    ]))  # fmt: skip
    reports = import_samples(store, "me", [unpaired, paired, lf])
    assert [(r.format, r.ratings, len(r.skipped)) for r in reports] == [
        ("trl-unpaired", 2, 1), ("trl-paired", 2, 0), ("llamafactory-kto", 2, 0)
    ]  # fmt: skip
    assert "not true or false" in reports[0].skipped[0].reason
    got = {(f["prompt"], f["text"], f["rating"]) for f in store.list_feedback(store.get_profile("me")["id"])}
    assert ("Describe snow.", "Snow is frozen water.", -1) in got
    assert ("Describe fog.", "Fog erases the far shore.", 1) in got
    assert ("Describe hail.", "Hail is ice.", -1) in got


def test_dry_run_writes_nothing_and_says_what_would_land(tmp_path, store):
    f = tmp_path / "conversations.json"
    f.write_text(json.dumps(chatgpt_export()))
    [report] = import_samples(store, "me", [f], dry_run=True)
    assert report.dry_run and report.added == 4
    assert store.find_profile("me") is None
    db = tmp_path / "cli.db"
    out = subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), "add-samples", str(f), "--profile", "me", "--dry-run",
         "--db", str(db)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (
        "[chatgpt]" in out.stdout and "4 would be added" in out.stdout and "nothing was written" in out.stdout
    )


def test_own_words_rule_and_linear_time():
    text = "I think so too, really.\n\n> you said this\n    code()\n    more()\n\nThat is all from me today."
    mine, removed = own_words(text)
    assert mine == "I think so too, really.\n\nThat is all from me today."
    assert removed == {"quoted": 1, "code": 2}
    quoted = "Saturday mornings are a fine time for the market; the stalls are fullest before ten."
    assert (
        own_words(f"{quoted}\n\nI agree with that completely.", ANSWER_1)[0]
        == "I agree with that completely."
    )
    import time

    big = ("a." * 50_000 + "\n") * 20 + "(" * 200_000 + "\n" + "at x" * 100_000
    t0 = time.perf_counter()
    own_words(big, big)
    assert time.perf_counter() - t0 < 20  # linear: ~0.1 s; a quadratic pass would take hours


@pytest.mark.parametrize(
    "bad", ['[{"mapping": 5}]', '[{"chat_messages": [1, 2]}]', '[{"chat": {"history": 3}}]']
)
def test_a_malformed_export_row_is_one_skipped_row(tmp_path, store, bad):
    f = tmp_path / "odd.json"
    f.write_text(bad)
    [report] = import_samples(store, "me", [f])
    assert report.error is None and report.added == 0


def test_round_trip_openwebui_ratings_train_and_leave_as_trl_and_llamafactory_datasets(
    tmp_path, target_store, pretrained_base
):
    """Ratings imported from an Open WebUI export are feedback, a run trains on them, and they come back out in
    the KTO JSONL, which TRL's KTOTrainer takes for one step; the DPO JSONL goes through DPOTrainer the same way
    and the LLaMA-Factory folder loads with `datasets` as its dataset_info.json describes it."""
    trl = pytest.importorskip("trl")
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from idiolect.core.export.bundle import export
    from idiolect.core.training.config import TrainConfig
    from idiolect.core.training.runs import create_run
    from idiolect.core.training.trainer import Trainer

    store = target_store
    pid = store.get_profile("me")["id"]
    chat = openwebui_chat()
    f = tmp_path / "chat-export.json"
    f.write_text(json.dumps([chat]))
    [report] = import_samples(store, "me", [f])
    assert report.ratings == 2
    # The regenerated answer was thumbs-down; an own turn answers the same prompt: a pair exists.
    assert {fb["rating"] for fb in store.list_feedback(pid)} == {1, -1}
    cfg = TrainConfig(model=str(pretrained_base), pool="others", steps=2, batch_size=2, save_every=1000)
    result = Trainer(store, create_run(store, "me", cfg)).run()
    counts = result["counts"]
    assert result["status"] == "completed" and counts["train_neg"] + counts["heldout_neg"] == 1

    out = tmp_path / "datasets"
    exported = export(store, "me", out, formats=["kto-jsonl", "dpo-jsonl", "llamafactory"])
    assert not exported.skipped, exported.skipped
    kto = load_dataset("json", data_files=str(out / "me-kto.jsonl"), split="train")
    n_samples = len(store.list_samples(pid))
    assert len(kto) == n_samples + 2 and sum(not x for x in kto["label"]) == 1
    rejected = next(r for r in kto if not r["label"])
    assert rejected["completion"][0]["content"] == "A first answer that the user regenerated."
    assert rejected["prompt"][0]["content"] == MINE_1
    dpo = load_dataset("json", data_files=str(out / "me-dpo.jsonl"), split="train")
    assert {r["rejected"][0]["content"] for r in dpo} == {"A first answer that the user regenerated."}
    assert trl.data_utils.is_conversational(kto[0]) and trl.data_utils.is_conversational(dpo[0])
    peers = load_dataset("json", data_files=str(out / "me-peers-unlabeled.jsonl"), split="train")
    assert len(peers) > 0 and set(peers.column_names) == {"prompt", "completion"}

    lf = out / "me-llamafactory"
    info = json.loads((lf / "dataset_info.json").read_text())
    for spec in info.values():
        rows = load_dataset("json", data_files=str(lf / spec["file_name"]), split="train")
        cols = spec["columns"]
        assert set(cols.values()) <= set(rows.column_names)
        messages = rows[0][cols["messages"]]
        role = spec.get("tags", {}).get("role_tag", "from")
        assert messages[0][role] in ("user", "human")
    assert info["me_kto"]["columns"]["kto_tag"] == "kto_tag" and info["me_dpo"]["ranking"] is True

    tok = AutoTokenizer.from_pretrained(pretrained_base)
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    common = dict(per_device_train_batch_size=2, max_steps=1, use_cpu=True, report_to=[], save_strategy="no",
                  max_length=96, logging_steps=1, dataloader_num_workers=0)  # fmt: skip
    for trainer_cls, cfg_cls, data in (
        (trl.KTOTrainer, trl.KTOConfig, kto),
        (trl.DPOTrainer, trl.DPOConfig, dpo),
    ):
        model = AutoModelForCausalLM.from_pretrained(pretrained_base)
        trainer = trainer_cls(
            model=model, args=cfg_cls(output_dir=str(tmp_path / trainer_cls.__name__), **common),
            train_dataset=data, processing_class=tok, peft_config=lora,
        )  # fmt: skip
        out_state = trainer.train()
        assert out_state.global_step == 1
