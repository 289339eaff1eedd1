"""BERT pretraining examples: sentence splitting, NSP pairs, segment ids and 80/10/10 masking.

Rates are measured over several epochs of the bundled corpus (thousands of masked tokens), with
tolerances of about three standard deviations of the measured proportion.
"""
import dataclasses
import json

import numpy as np
import pytest

from conftest import DEMO_DATA
from ms_gpt2.data.bert_pairs import Vocabulary, encode_pair, truncate_pair
from ms_gpt2.jobs.bert_pretrain import (IGNORE, IS_NEXT, NOT_NEXT, OTHER_DOCUMENTS, SAME_DOCUMENT,
                                        ExampleBuilder, held_out_examples, make_pairs, mask_tokens,
                                        read_sentences, split_sentences)
from ms_gpt2.infra.config import ConfigError
from ms_gpt2.data.nlpcc import DataError, _text_lines

MAX_LEN = 48


@pytest.fixture(scope="module")
def documents(tokenizer):
    n = sum(1 for _ in open(DEMO_DATA, encoding="utf-8"))
    return read_sentences(_text_lines(DEMO_DATA, 0, n), tokenizer, text_field="article")


def epoch_rows(builder, epoch):
    """The builder's examples of one epoch, by index, through the MindSpore pipeline (unshuffled)."""
    rows = list(builder.pipeline(epoch, batch_size=1000, shuffle=False).create_dict_iterator(num_epochs=1,
                                                                                           output_numpy=True))
    return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


def originals(builder, epoch):
    """The unmasked input_ids of every example: the pair encoded without masking."""
    p = builder.pairs(epoch)
    return np.stack([encode_pair(builder.documents[p.a_doc[i]][p.a_sent[i]], builder.documents[p.b_doc[i]][p.b_sent[i]],
                                 builder.vocab, builder.max_seq_len)[0] for i in range(len(p))])


def test_sentences_end_at_full_stops_exclamations_questions_and_line_ends():
    text = "今天下雨。明天呢？晴！\n“好的。”他说\n\n最后一句没有句号"
    assert split_sentences(text) == ["今天下雨。", "明天呢？", "晴！", "“好的。”", "他说", "最后一句没有句号"]
    assert split_sentences("。。\n  ") == ["。。"]


def test_documents_are_read_as_tokenized_sentences(documents, tokenizer):
    first = json.loads(open(DEMO_DATA, encoding="utf-8").readline())["article"]
    sentences = split_sentences(first)
    assert len(documents) == 64 and len(documents[0]) == len(sentences)
    assert [tokenizer.convert_ids_to_tokens(s.tolist()) for s in documents[0]] == [tokenizer.tokenize(s) for s in sentences]


def test_masking_rates_and_80_10_10_split_specials_never_masked(documents, tokenizer):
    builder = ExampleBuilder(documents, tokenizer, MAX_LEN, seed=3)
    special = np.isin
    chosen = candidates = to_mask = to_random = kept = 0
    for epoch in range(6):
        rows, orig = epoch_rows(builder, epoch), originals(builder, epoch)
        ids, labels = rows["input_ids"], rows["labels"]
        is_special = special(orig, builder.vocab.special)
        picked = labels != IGNORE
        assert not (picked & is_special).any()                      # [CLS]/[SEP]/[PAD] never chosen
        assert (ids[is_special] == orig[is_special]).all()           # ...nor altered
        assert (ids[~picked] == orig[~picked]).all()                 # only chosen positions change
        assert (labels[picked] == orig[picked]).all()                # labels are the original tokens
        assert picked.any(axis=1).all()                              # every example predicts something
        chosen += picked.sum()
        candidates += (~is_special).sum()
        to_mask += (ids[picked] == tokenizer.mask_token_id).sum()
        kept += (ids[picked] == orig[picked]).sum()
        to_random += ((ids[picked] != orig[picked]) & (ids[picked] != tokenizer.mask_token_id)).sum()
    assert chosen > 5000
    assert abs(chosen / candidates - 0.15) < 0.006
    assert abs(to_mask / chosen - 0.8) < 0.02
    # a random replacement equal to the original (p = 1/1000 here) counts as kept
    assert abs(kept / chosen - 0.1) < 0.015 and abs(to_random / chosen - 0.1) < 0.015


def test_random_replacements_are_never_special_tokens(documents, tokenizer):
    """The 10% "random token" is an ordinary one: never [PAD], [UNK], [CLS], [SEP] or [MASK].

    [MASK] is written as -1 here (an id no token has), so every other changed position is a random
    draw, a drawn [MASK] included. About 8,900 draws: drawing from the whole vocabulary (5 specials
    in 1,100 ids) would show a special ~40 times."""
    vocab = Vocabulary.of(tokenizer)
    special = tokenizer.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    assert not np.isin(vocab.ordinary, special).any()
    assert set(vocab.ordinary) | set(special) == set(tokenizer.get_vocab().values())
    marked = dataclasses.replace(vocab, mask=-1)
    orig = originals(ExampleBuilder(documents, tokenizer, MAX_LEN, seed=3), 0)
    drawn = []
    for seed in range(24):
        for i, ids in enumerate(orig):
            masked, labels = mask_tokens(ids, marked, np.random.default_rng([seed, i]), probability=0.5)
            changed = (masked != ids) & (masked != -1)
            assert (labels[changed] == ids[changed]).all()  # a replaced token is still predicted
            drawn.append(masked[changed])
    drawn = np.concatenate(drawn)
    assert len(drawn) > 8000, (len(drawn), len(vocab.ordinary))
    assert not np.isin(drawn, special).any(), (len(drawn), len(vocab.ordinary))
    assert len(np.unique(drawn)) > len(vocab.ordinary) * 0.8  # drawn from the whole ordinary vocabulary


def test_nsp_pairs_are_half_consecutive_sentences_half_from_another_document(documents, tokenizer):
    builder = ExampleBuilder(documents, tokenizer, MAX_LEN, seed=3)
    labels = []
    for epoch in range(6):
        p = builder.pairs(epoch)
        rows, orig = epoch_rows(builder, epoch), originals(builder, epoch)
        assert (rows["next_sentence_label"] == p.label).all()
        nxt = p.label == IS_NEXT
        assert ((p.b_doc == p.a_doc) & (p.b_sent == p.a_sent + 1))[nxt].all()
        assert (p.b_doc != p.a_doc)[~nxt].all()
        for i in np.flatnonzero(nxt)[:20]:  # the tokens themselves: A then B, consecutive in one document
            seps = np.flatnonzero(orig[i] == tokenizer.sep_token_id)
            a, b = orig[i][1:seps[0]], orig[i][seps[0] + 1:seps[1]]
            doc = documents[p.a_doc[i]]
            k = p.a_sent[i]
            assert (doc[k][:len(a)] == a).all() and (doc[k + 1][:len(b)] == b).all()
        labels.append(p.label)
    labels = np.concatenate(labels)
    assert len(labels) > 1000 and set(np.unique(labels)) == {IS_NEXT, NOT_NEXT}
    assert abs((labels == IS_NEXT).mean() - 0.5) < 0.05


def test_held_out_nsp_negatives_come_from_held_out_documents_only(documents, tokenizer):
    """One held-out document with sentences (the others empty): B is another sentence of that
    document, not A nor its successor; with two or more, another held-out document. The builder
    never sees a training document, and the eval report says which kind of negatives it scored."""
    longest = [s for d in documents[:10] for s in d]  # one long document
    lone = [[], longest, []]
    builder, negatives = held_out_examples(lone, tokenizer, max_seq_len=MAX_LEN, seed=3)
    assert negatives == SAME_DOCUMENT and builder.documents is lone
    labels = []
    for epoch in range(20):
        p = builder.pairs(epoch)
        assert (p.a_doc == 1).all() and (p.b_doc == 1).all()
        nxt = p.label == IS_NEXT
        assert (p.b_sent == p.a_sent + 1)[nxt].all()
        assert ((p.b_sent != p.a_sent) & (p.b_sent != p.a_sent + 1))[~nxt].all()
        labels.append(p.label)
    labels = np.concatenate(labels)
    assert len(labels) > 600 and abs((labels == NOT_NEXT).mean() - 0.5) < 0.1  # 680 pairs: 0.1 is 5 sd
    rows, orig = epoch_rows(builder, 0), originals(builder, 0)
    assert (rows["next_sentence_label"] == builder.pairs(0).label).all() and len(orig) == len(longest) - 1

    two = [[documents[0][0], documents[0][1]]]  # a two-sentence document: no other sentence for B
    assert all((make_pairs(two, np.random.default_rng(seed), same_document=True).label == IS_NEXT).all()
               for seed in range(20))  # ~10 of these 20 coin flips asked for a negative

    builder, negatives = held_out_examples(documents[60:], tokenizer, max_seq_len=MAX_LEN, seed=3)
    p = builder.pairs(0)
    assert negatives == OTHER_DOCUMENTS and (p.b_doc != p.a_doc)[p.label == NOT_NEXT].all()


def test_segment_ids_and_attention_follow_the_sep_positions(documents, tokenizer):
    builder = ExampleBuilder(documents, tokenizer, MAX_LEN, seed=1)
    rows, orig = epoch_rows(builder, 0), originals(builder, 0)
    for ids, segments, attention in zip(orig, rows["token_type_ids"], rows["attention_mask"]):
        seps = np.flatnonzero(ids == tokenizer.sep_token_id)
        assert len(seps) == 2 and ids[0] == tokenizer.cls_token_id
        want = np.zeros(MAX_LEN, np.int32)
        want[seps[0] + 1: seps[1] + 1] = 1
        assert (segments == want).all()
        assert (attention == (np.arange(MAX_LEN) <= seps[1])).all()
        assert (ids[seps[1] + 1:] == tokenizer.pad_token_id).all() and seps[0] >= 2 and seps[1] - seps[0] >= 2


def test_truncation_cuts_the_longer_sentence_first():
    a, b = np.arange(10), np.arange(100, 103)
    assert [len(x) for x in truncate_pair(a, b, 8)] == [5, 3]
    assert [len(x) for x in truncate_pair(np.arange(6), np.arange(7), 8)] == [4, 4]
    assert (truncate_pair(a, b, 8)[0] == np.arange(5)).all()  # the end goes


def test_examples_repeat_across_runs_masks_are_dynamic_per_epoch_or_static(documents, tokenizer):
    dynamic = [ExampleBuilder(documents, tokenizer, MAX_LEN, seed=5) for _ in range(2)]
    e0, again = epoch_rows(dynamic[0], 0), epoch_rows(dynamic[1], 0)
    assert all((e0[k] == again[k]).all() for k in e0)                      # reproducible from the seed
    e1 = epoch_rows(dynamic[0], 1)
    assert (e1["labels"] != e0["labels"]).any() and (e1["next_sentence_label"] != e0["next_sentence_label"]).any()
    other_seed = epoch_rows(ExampleBuilder(documents, tokenizer, MAX_LEN, seed=6), 0)
    assert (other_seed["labels"] != e0["labels"]).any()

    static = ExampleBuilder(documents, tokenizer, MAX_LEN, seed=5, masking="static")
    s0, s3 = epoch_rows(static, 0), epoch_rows(static, 3)
    assert all((s0[k] == s3[k]).all() and (s0[k] == e0[k]).all() for k in s0)

    # the shuffled pipeline holds the same examples: masks depend on the index, not the order
    shuffled = list(dynamic[0].pipeline(1, 1000, shuffle=True).create_dict_iterator(num_epochs=1, output_numpy=True))
    shuffled = np.concatenate([r["input_ids"] for r in shuffled])
    assert not (shuffled == e1["input_ids"]).all()
    assert sorted(map(bytes, shuffled)) == sorted(map(bytes, e1["input_ids"]))


def test_nsp_needs_two_documents_and_options_are_checked(tokenizer):
    one = [[np.arange(5, 9), np.arange(9, 12), np.arange(12, 15)]]
    with pytest.raises(DataError, match="at least two documents"):
        # seeds until a random-B pair is drawn (the first coin flips may all say IsNext)
        for seed in range(20):
            make_pairs(one, np.random.default_rng(seed))
    with pytest.raises(ConfigError, match="pretrain.masking must be dynamic or static"):
        ExampleBuilder(one, tokenizer, MAX_LEN, seed=0, masking="sometimes")
    with pytest.raises(ConfigError, match=r"pretrain.mlm_probability must be in \(0, 1\)"):
        ExampleBuilder(one, tokenizer, MAX_LEN, seed=0, mlm_probability=1.5)
