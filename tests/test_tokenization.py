"""Loading a bert-base-chinese style vocabulary, refusing wrong ones, building one, decoding."""
import pytest

from ms_gpt2.data.tokenization import SPECIAL_TOKENS, TokenizerError, build_tokenizer, decode, load_wordpiece


def test_loads_from_directory_and_from_vocab_file(char_vocab_dir):
    a = load_wordpiece(char_vocab_dir)
    b = load_wordpiece(char_vocab_dir / "vocab.txt")
    assert a.pad_token_id == b.pad_token_id == 0
    assert a("青禾市")["input_ids"] == b("青禾市")["input_ids"]


@pytest.mark.parametrize("tokens,reason", [
    (["[UNK]", "[PAD]", "[CLS]", "[SEP]", "[MASK]", "中"], r"\[PAD\] has id 1, expected 0"),
    (["[PAD]", "[UNK]", "[CLS]", "[MASK]", "中"], r"lacks \[SEP\]"),
    (["<pad>", "<s>", "</s>", "中"], r"lacks \[PAD\], \[UNK\], \[CLS\], \[SEP\], \[MASK\]"),
])
def test_wrong_vocabularies_are_refused_naming_the_file(tmp_path, tokens, reason):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match=reason) as info:
        load_wordpiece(vocab)
    assert str(vocab) in str(info.value)


def test_missing_tokenizer_paths(tmp_path):
    with pytest.raises(TokenizerError, match="no vocab.txt"):
        load_wordpiece(tmp_path)
    with pytest.raises(TokenizerError, match="no such tokenizer"):
        load_wordpiece(tmp_path / "nope")


def test_builds_a_bert_layout_vocabulary_from_the_corpus(tmp_path):
    texts = ["青禾市地铁5号线开通运营", "南屿省发布寒潮预警", "GPT 2 model training"] * 5
    tok = build_tokenizer(texts, tmp_path / "tok", vocab_size=200)
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (tmp_path / "tok" / "vocab.txt").is_file() and (tmp_path / "tok" / "tokenizer_config.json").is_file()
    assert tok.unk_token_id not in tok("青禾市地铁")["input_ids"]
    reloaded = load_wordpiece(tmp_path / "tok")
    assert reloaded("南屿省发布")["input_ids"] == tok("南屿省发布")["input_ids"]


def test_decode_drops_spaces_between_chinese_but_not_between_words(tokenizer, tmp_path):
    ids = tokenizer("青禾市轨道交通5号线")["input_ids"]
    assert decode(tokenizer, ids) == "青禾市轨道交通5号线"
    english = build_tokenizer(["gpt model runs fast"] * 3, tmp_path / "en", vocab_size=100)
    assert decode(english, english("gpt model")["input_ids"]) == "gpt model"
