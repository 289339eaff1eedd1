"""Files saved with a UTF-8 byte-order mark (Windows editors' "UTF-8") read exactly as without it.

Every reader of user files goes through ``ms_gpt2.data.nlpcc._lines`` (the checking pass) and then a
MindSpore ``TextFileDataset`` over the file or a clean copy of it: each test reads the same lines
with and without the mark through that reader and compares records and token ids (exact)."""
import json

import numpy as np
import pytest

from conftest import DEMO_DATA
from ms_gpt2.data.nlpcc import UTF8_BOM

ROWS = [json.loads(line) for line in open(DEMO_DATA, encoding="utf-8")][:6]


def _pair(tmp_path, lines: list[str], name: str):
    """The same lines twice: ``plain/<name>`` and ``bom/<name>`` (UTF-8 with a byte-order mark)."""
    body = "".join(line + "\n" for line in lines).encode("utf-8")
    paths = []
    for kind, prefix in (("plain", b""), ("bom", UTF8_BOM)):
        (tmp_path / kind).mkdir(exist_ok=True)
        path = tmp_path / kind / name
        path.write_bytes(prefix + body)
        paths.append(path)
    assert paths[1].read_bytes().startswith(b"\xef\xbb\xbf")
    return paths


def _nlpcc(tmp_path):
    return _pair(tmp_path, [json.dumps(r, ensure_ascii=False) for r in ROWS], "news.jsonl")


def _rows(pipeline):
    return list(pipeline.create_dict_iterator(num_epochs=1, output_numpy=True))


def test_nlpcc_records_and_first_training_batch_are_the_same(tmp_path, tokenizer):
    """train / evaluate / summarize / finetune-bert: NLPCCSource and the pipelines behind it."""
    from ms_gpt2.jobs.bert_finetune import read_records
    from ms_gpt2.data.nlpcc import NLPCCSource, records
    from ms_gpt2.data.examples import prompt_pipeline, train_pipeline

    plain, bom = _nlpcc(tmp_path)
    sources = [NLPCCSource.open(p, tmp_path / "work" / p.parent.name, train_ratio=0.5) for p in (plain, bom)]
    assert [(s.n_train, s.n_test) for s in sources] == [(3, 3), (3, 3)]
    want = [(r["article"].strip(), r["summarization"].strip()) for r in ROWS]
    for source in sources:
        assert list(records(source.lines("all"))) == want
        assert "\ufeff" not in source.path.read_text(encoding="utf-8")  # what TextFileDataset reads

    batches = [_rows(train_pipeline(s.lines("train"), tokenizer, 128, batch_size=3)) for s in sources]
    prompts = [_rows(prompt_pipeline(s.lines("test"), tokenizer, 64)) for s in sources]
    pairs = [read_records(s.lines("all"), tokenizer) for s in sources]
    for a, b in [(batches[0], batches[1]), (prompts[0], prompts[1])]:
        assert len(a) == len(b) > 0
        for row_a, row_b in zip(a, b):
            assert row_a.keys() == row_b.keys()
            for key in row_a:
                np.testing.assert_array_equal(row_a[key], row_b[key])
    assert len(pairs[0]) == len(pairs[1]) == 6
    for (sa, aa), (sb, ab) in zip(*pairs):
        np.testing.assert_array_equal(sa, sb)
        np.testing.assert_array_equal(aa, ab)
    # the first record's tokens are the article's own: no [UNK] for the mark in front of it
    first = batches[1][0]["input_ids"][0]  # [CLS] article (cut to fit) [SEP] summary [SEP]
    expected = [tokenizer.cls_token_id] + tokenizer(ROWS[0]["article"].strip(), add_special_tokens=False)["input_ids"]
    assert first[:50].tolist() == expected[:50]


@pytest.mark.parametrize("text_field", [None, "article"])
def test_pretraining_corpora_read_the_same_documents_and_tokens(tmp_path, tokenizer, text_field):
    """pretrain (plain .txt, or JSON lines with --text-field) and pretrain --objective mlm-nsp."""
    from ms_gpt2.jobs.bert_pretrain import read_sentences
    from ms_gpt2.data.corpus import CorpusSource
    from ms_gpt2.jobs.pretrain import document_ids, document_pipeline

    if text_field is None:
        plain, bom = _pair(tmp_path, [r["article"].strip() for r in ROWS], "corpus.txt")
    else:
        plain, bom = _nlpcc(tmp_path)
    sources = [CorpusSource.open(p, tmp_path / "work" / p.parent.name, text_field, eval_fraction=0.5)
               for p in (plain, bom)]
    assert [(s.n_train, s.n_eval) for s in sources] == [(3, 3), (3, 3)]
    texts = [list(s.train_texts()) for s in sources]
    assert texts[0] == texts[1] == [r["article"].strip() for r in ROWS[:3]]
    sep = tokenizer.sep_token_id
    ids = [list(document_ids(document_pipeline(s.lines("all"), tokenizer, sep, text_field))) for s in sources]
    sentences = [read_sentences(s.lines("all"), tokenizer, text_field) for s in sources]
    assert len(ids[0]) == len(ids[1]) == 6 and len(sentences[0]) == len(sentences[1]) == 6
    for a, b in zip(*ids):
        np.testing.assert_array_equal(a, b)
    for doc_a, doc_b in zip(*sentences):
        assert len(doc_a) == len(doc_b)
        for a, b in zip(doc_a, doc_b):
            np.testing.assert_array_equal(a, b)
    assert ids[1][0][:-1].tolist() == tokenizer(ROWS[0]["article"].strip(), add_special_tokens=False)["input_ids"]
    assert "\ufeff" not in sources[1].path.read_text(encoding="utf-8")


def test_a_vocab_txt_with_a_byte_order_mark_is_named_in_one_line(tmp_path, char_vocab_dir):
    from ms_gpt2.data.tokenization import TokenizerError, load_wordpiece

    lines = (char_vocab_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    plain, bom = _pair(tmp_path, lines, "vocab.txt")
    assert load_wordpiece(plain).vocab["[PAD]"] == 0
    for given in (bom, bom.parent):
        with pytest.raises(TokenizerError) as info:
            load_wordpiece(given)
        assert str(info.value).startswith(f"{bom}: vocab.txt starts with a UTF-8 byte-order mark")
        assert "\n" not in str(info.value)


def test_train_on_a_file_with_a_byte_order_mark_runs_as_without(tmp_path, char_vocab_dir, capsys):
    """The CLI end to end: the same loss log (exact) for the file with and without the mark."""
    from ms_gpt2 import cli

    plain, bom = _nlpcc(tmp_path)
    sets = ["model.n_positions=160", "model.n_embd=32", "model.n_layer=1", "model.n_head=2", "model.dropout=0.0",
            "data.max_seq_len=128", "data.max_summary_len=30", "data.train_ratio=1.0",
            "training.per_device_train_batch_size=3", "training.num_train_epochs=1", "training.logging_steps=1",
            "training.save_steps=100", f"tokenizer.path={char_vocab_dir}"]
    logs = []
    for data in (plain, bom):
        out = tmp_path / "runs" / data.parent.name
        argv = ["train", "--config", "configs/smoke.yaml", "--data", str(data), "--output-dir", str(out),
                "--device", "cpu", "--seed", "0"] + [a for s in sets for a in ("--set", s)]
        assert cli.main(argv) == 0
        logs.append([json.loads(line) for line in (out / "loss_log.jsonl").read_text(encoding="utf-8").splitlines()])
    capsys.readouterr()
    assert [e["step"] for e in logs[0]] == [1, 2]
    assert logs[0] == logs[1]
