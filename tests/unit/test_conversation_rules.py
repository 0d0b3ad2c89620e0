"""The pure rules behind complete chat completions and gateways, without I/O: parameters and capabilities,
housekeeping prompts, matching a conversation handed back against the chat that holds it, tool-call ids,
role maps and the prompt estimate the quota reserves by."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from application.conversations import estimate_prompt_tokens
from domain.chats import (
    Chat,
    comparable_text,
    generation_of_tool_call,
    housekeeping_purpose,
    tool_call_id_for,
)
from domain.errors import Invalid
from domain.identity import check_role_map
from domain.models import Capabilities, check_capabilities, check_params, default_capabilities

TENANT = str(uuid.uuid4())


def new_chat() -> Chat:
    return Chat(tenant_id=TENANT, owner_id=uuid.uuid4(), title="t", source="openai")


# --- parameters and capabilities ------------------------------------------------------------------------
def test_every_openai_sampling_parameter_is_checked_and_kept() -> None:
    params = check_params(
        {
            "temperature": 0.5,
            "top_p": 0.9,
            "max_tokens": 100,
            "seed": 7,
            "top_k": 40,
            "min_p": 0.1,
            "frequency_penalty": -1,
            "presence_penalty": 2,
            "repetition_penalty": 1.2,
            "logit_bias": {" 42 ": 5, "7": -100},
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
            "reasoning_effort": "high",
        }
    )
    assert params["logit_bias"] == {"42": 5.0, "7": -100.0}
    assert params["frequency_penalty"] == -1.0 and params["top_k"] == 40


@pytest.mark.parametrize(
    "bad",
    [
        {"top_k": -2},
        {"min_p": 1.5},
        {"frequency_penalty": 2.5},
        {"repetition_penalty": 0},
        {"logit_bias": {"x": 1}},
        {"logit_bias": {"1": 101}},
        {"logit_bias": {str(i): 1 for i in range(301)}},
        {"response_format": {"type": "xml"}},
        {"response_format": {"type": "json_schema"}},
        {"reasoning_effort": "max"},
        {"nonsense": 1},
    ],
)
def test_a_bad_parameter_is_refused_by_name(bad: dict[str, object]) -> None:
    with pytest.raises(Invalid) as caught:
        check_params(bad)
    assert caught.value.code == "INVALID_PARAMETER"


def test_no_top_k_and_a_text_format_mean_nothing_set() -> None:
    assert check_params({"top_k": -1, "response_format": {"type": "text"}, "logit_bias": {}}) == {}


def test_capabilities_default_by_kind_and_change_field_by_field() -> None:
    local = default_capabilities("local")
    assert (local.context_window, local.tools, local.vision) == (8192, False, False)
    changed = check_capabilities({"tools": True, "params": ["seed"]}, local)
    assert changed == Capabilities(8192, True, False, ("seed",), None)
    for bad in ({"context_window": 3}, {"params": ["temperature"]}, {"vision": "yes"}, {"colour": 1},
                {"max_output_tokens": 9000}):  # fmt: skip
        with pytest.raises(Invalid):
            check_capabilities(bad, local)


def test_an_answer_has_the_room_the_window_leaves_up_to_the_output_limit() -> None:
    assert Capabilities(1000, False, False, ()).answer_room(300) == 700
    assert Capabilities(1000, False, False, (), max_output_tokens=100).answer_room(300) == 100
    assert Capabilities(1000, False, False, ()).answer_room(5000) == 1


# --- housekeeping -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "purpose"),
    [
        ("### Task:\nGenerate a concise title summarizing the chat history.\n...", "title"),
        ("### Task:\nGenerate 1-3 broad tags categorizing the main themes of the chat history", "tags"),
        ("### Task:\nPredict 3-5 useful messages this user might naturally send next in the conversation", "follow_ups"),
        ("### Task:\nAnalyze the chat history to determine the necessity of generating search queries", "queries"),
        ("### Task:\nYou are an autocompletion system.", "autocomplete"),
        ("Your task is to reflect the speaker's likely facial expression through a fitting emoji.", "emoji"),
        ("### Task:\nSomething an admin wrote", "task"),
        ("### Task:\nRespond to the user query using the provided context, ...", None),
        ("What is a title?", None),
    ],
)
def test_a_front_ends_task_prompt_is_housekeeping(text: str, purpose: str | None) -> None:
    assert housekeeping_purpose([("user", text)], streamed=False, tools=False) == purpose


def test_a_streamed_or_tool_carrying_or_longer_prompt_is_a_conversation_turn() -> None:
    title = "### Task:\nGenerate a concise title"
    assert housekeeping_purpose([("user", title)], streamed=True, tools=False) is None
    assert housekeeping_purpose([("user", title)], streamed=False, tools=True) is None
    assert housekeeping_purpose([("system", "x"), ("user", title)], streamed=False, tools=False) is None


# --- matching a conversation handed back ------------------------------------------------------------------
def test_text_compares_as_front_ends_resend_it() -> None:
    assert comparable_text("assistant", "<think>hmm</think>\n  Paris.\n") == "Paris."
    rag = "### Task:\nRespond to the user query...\n<context>\n<source>x</source>\n</context>\n\n<attached_files>\n<file id=\"1\"/>\n</attached_files>\n\nWhat is the code word?"
    later = "<attached_files>\n<file id=\"1\"/>\n</attached_files>\n\nWhat is the code word?"
    assert comparable_text("user", rag) == comparable_text("user", later) == "What is the code word?"
    assert comparable_text("user", "<user_query>\nq\n</user_query>") == "q"
    assert comparable_text("user", "  plain  ") == "plain"


def test_a_chat_recognises_the_part_of_a_conversation_it_holds_and_branches_on_an_edit() -> None:
    chat = new_chat()
    chat.post("u1", "user", "hello", None)
    chat.record_answer(message_id="a1", parent_id="u1", generation_id=uuid.uuid4(), model="m", content=" hi! ",
                       thinking="", status="completed", prompt_tokens=1, completion_tokens=1, timings={})  # fmt: skip
    chat.post("u2", "user", "how are you", "a1")
    turns = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi!"}, {"role": "user", "content": "how are you"}]
    assert chat.match(turns) == ("u2", 3)
    assert chat.match([*turns[:2], {"role": "user", "content": "edited"}]) == ("a1", 2)
    assert chat.match([{"role": "system", "content": "new"}, *turns]) == (None, 0)
    # Two identical siblings: the newest is followed.
    chat.post("u2b", "user", "how are you", "a1")
    assert chat.match(turns) == ("u2b", 3)


def test_tool_calls_and_results_are_part_of_what_must_match() -> None:
    chat = new_chat()
    chat.post("u1", "user", "weather?", None)
    call = {"id": "call_x", "name": "get_weather", "arguments": '{"q": "Oslo"}'}
    chat.post("a1", "assistant", "", "u1", tool_calls=[call])
    chat.post_tool_result("t1", "a1", tool_call_id="call_x", name=None, content="sunny", latency_ms=12.345)
    assert chat.messages["t1"]["name"] == "get_weather"  # taken from the call it answers
    turns = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "sunny", "tool_call_id": "call_x"},
    ]
    assert chat.match(turns) == ("t1", 3)
    other_args = [turns[0], {**turns[1], "tool_calls": [{**call, "arguments": "{}"}]}]
    assert chat.match(other_args) == ("u1", 1)
    other_call = [*turns[:2], {**turns[2], "tool_call_id": "call_y"}]
    assert chat.match(other_call) == ("a1", 2)


@given(st.uuids(), st.integers(min_value=0, max_value=127))
def test_a_tool_call_id_leads_back_to_its_generation(generation_id: uuid.UUID, index: int) -> None:
    assert generation_of_tool_call(tool_call_id_for(generation_id, index)) == generation_id


@pytest.mark.parametrize("foreign", ["call_abc", "call_up0", "toolu_01A", "", "call_" + "z" * 32 + "_1"])
def test_a_foreign_tool_call_id_leads_nowhere(foreign: str) -> None:
    assert generation_of_tool_call(foreign) is None


# --- gateways and reservations ----------------------------------------------------------------------------
def test_a_role_map_maps_front_end_roles_to_parley_roles_never_to_admin() -> None:
    assert check_role_map({" Admin ": "premium", "user": "user"}) == {"admin": "premium", "user": "user"}
    for bad in ({"user": "admin"}, {"user": "wizard"}, {"": "user"}, {f"r{i}": "user" for i in range(33)}):
        with pytest.raises(Invalid):
            check_role_map(bad)


def test_the_prompt_estimate_is_generous_for_every_script_and_counts_images() -> None:
    assert estimate_prompt_tokens([{"content": "x" * 30}]) == 10
    assert estimate_prompt_tokens([{"content": "日本語" * 10}]) == 30  # a CJK character is about a token
    assert estimate_prompt_tokens([{"content": "", "images": [{"sha256": "a"}] * 2}]) == 2000
    call = {"name": "f", "arguments": "x" * 29}
    assert estimate_prompt_tokens([{"content": "", "tool_calls": [call]}]) == 10


def test_a_window_smaller_than_the_kinds_output_limit_bounds_the_answer_itself() -> None:
    openai_kind = default_capabilities("openai")
    assert openai_kind.max_output_tokens == 16_384
    assert check_capabilities({"context_window": 4096}, openai_kind).max_output_tokens is None
    with pytest.raises(Invalid):
        check_capabilities({"context_window": 4096, "max_output_tokens": 5000}, openai_kind)
