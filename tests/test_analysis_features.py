"""Feature tracks on hand-made texts: every value written out by hand, character by character."""
import numpy as np
import pytest

from analysis.features import FEATURES, feature_tracks


def track(name, text):
    return feature_tracks(text, [name])[name].tolist()


def test_inside_quotes_flips_on_each_quote_including_the_opening_one():
    text = 'a"bc"d"e'
    #        a  "  b  c  "  d  "  e
    assert track("inside_quotes", text) == [0, 1, 1, 1, 0, 0, 1, 1]


def test_code_strings_cover_both_quotes_escapes_and_triple_quotes_but_not_comments():
    text = 'x="a\\"b"#c"d\n\'\'\'e\n\'\'\''
    #        x  =  "  a  \  "  b  "  #  c  "  d  \n '  '  '  e  \n '  '  '
    assert track("inside_string", text) == [0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0]
    assert track("inside_comment", text) == [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]


def test_a_one_line_string_left_open_ends_with_its_line():
    assert track("inside_string", "it's\nok") == [0, 0, 1, 1, 0, 0, 0]


def test_line_position_counts_from_the_last_newline():
    text = "ab\ncde\n\nf"
    assert track("line_position", text) == [1, 2, 0, 1, 2, 3, 0, 0, 1]


def test_newline_ahead_counts_down_to_the_next_newline_then_to_the_end():
    text = "ab\ncd\n\nxy"
    #        a  b  \n c  d  \n \n x  y
    assert track("newline_ahead", text) == [2, 1, 3, 2, 1, 1, 3, 2, 1]


def test_bracket_depth_nests_all_three_kinds_and_never_goes_below_zero():
    text = "f(a[b{c}]))x(y"
    #        f  (  a  [  b  {  c  }  ]  )  )  x  (  y
    assert track("bracket_depth", text) == [0, 1, 1, 2, 2, 3, 3, 2, 1, 0, 0, 0, 1, 1]


def test_indentation_grows_through_the_leading_whitespace_and_counts_tabs_to_8():
    text = "if x:\n    y\n\t z\n"
    expected = [0] * 5 + [0]  # "if x:" and its newline
    expected += [1, 2, 3, 4, 4, 0]  # "    y" and newline
    expected += [8, 9, 9, 0]  # "\t z" (tab to column 8, then a space) and newline
    assert track("indentation", text) == expected


def test_word_tracks():
    text = "ab c_1, d"
    #        a  b  ' ' c  _  1  ,  ' ' d
    assert track("inside_word", text) == [1, 1, 0, 1, 1, 1, 0, 0, 1]
    assert track("word_position", text) == [1, 2, 0, 1, 2, 3, 0, 0, 1]
    assert track("word_boundary", text) == [0, 1, 0, 0, 0, 1, 0, 0, 1]


def test_every_feature_has_one_value_per_character_also_for_empty_and_non_ascii_text():
    for text in ["", "é", "«ça» (déjà)\n\tvu"]:
        tracks = feature_tracks(text)
        assert set(tracks) == set(FEATURES)
        assert all(len(v) == len(text) and v.dtype == np.float32 for v in tracks.values())


def test_unknown_feature_is_refused_by_name():
    with pytest.raises(ValueError, match="nonsense"):
        feature_tracks("abc", ["nonsense"])


# --- C ------------------------------------------------------------------------------------------------------
def c_track(name, text):
    return feature_tracks(text, [name], language="c")[name].tolist()


def test_c_block_and_line_comments_include_their_opener_but_not_the_closing_slash_or_newline():
    text = "a/*b*/c//d\ne"
    #        a  /  *  b  *  /  c  /  /  d  \n e
    assert c_track("inside_comment", text) == [0, 1, 1, 1, 1, 0, 0, 1, 1, 1, 0, 0]
    assert c_track("inside_string", text) == [0] * 12
    assert c_track("inside_comment", "x/*\n{*") == [0, 1, 1, 1, 1, 1]  # left open: to the end of the text


def test_c_string_and_char_literals_with_escapes():
    text = 'p("%d\\n", \'"\');'
    #        p  (  "  %  d  \  n  "  ,  ' ' '  "  '  )  ;
    assert c_track("inside_string", text) == [0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0]
    text = "c='\\'';"
    #        c  =  '  \  '  '  ;
    assert c_track("inside_string", text) == [0, 0, 1, 1, 1, 0, 0]


def test_c_comment_markers_in_strings_and_quotes_in_comments_are_just_characters():
    text = "\"/*\"/*'*/x"
    #        "  /  *  "  /  *  '  *  /  x
    assert c_track("inside_string", text) == [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    assert c_track("inside_comment", text) == [0, 0, 0, 0, 1, 1, 1, 1, 0, 0]
    text = "// don't\nx"  # the apostrophe of a comment opens no literal
    assert c_track("inside_string", text) == [0] * 10
    assert c_track("inside_comment", text) == [1] * 8 + [0, 0]


def test_a_c_literal_left_open_ends_with_its_line_and_preprocessor_lines_are_not_comments():
    assert c_track("inside_string", "it's\nx") == [0, 0, 1, 1, 0, 0]
    assert c_track("inside_comment", "#include <a.h>\n") == [0] * 15
    assert track("inside_comment", "#include <a.h>\n") == [0] * 15  # sniffed as C from the #include
    assert feature_tracks("#include <a.h>\n", ["inside_comment"], language="python")["inside_comment"].tolist() \
        == [1] * 14 + [0]


def test_the_language_is_sniffed_from_the_text():
    from analysis.features import sniff_language

    assert sniff_language("static int f(void)\n{\n\treturn g(x);\n}\n") == "c"
    assert sniff_language("import os\n\n\ndef f(self):\n    return 1\n") == "python"
    assert sniff_language("ROMEO:\nBut soft; what light through yonder window breaks?\n" * 20) == "prose"
    assert sniff_language("") == "prose"
    with pytest.raises(ValueError, match="fortran"):
        feature_tracks("x", ["inside_string"], language="fortran")
