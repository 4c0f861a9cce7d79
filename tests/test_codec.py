from __future__ import annotations

import codecs
import dataclasses
import json
import tracemalloc
import typing
from typing import Any

import msgspec
import pydantic
import pytest

from taskflow.codec import (
    JSON,
    MSGPACK,
    Codecs,
    decoder_for,
    encode_headers,
    encode_key,
    encode_record,
    encode_value,
    takes_tombstones,
)
from taskflow.exceptions import (
    ConfigurationError,
    DecodeError,
    HandlerSignatureError,
    PublishError,
    Reject,
    SkipTombstone,
)
from taskflow.formats.msgpack_codec import MsgpackCodec
from taskflow.message import Message


@dataclasses.dataclass
class Order:
    id: int
    customer: str


@dataclasses.dataclass
class Positive:
    amount: int

    def __post_init__(self) -> None:
        if self.amount <= 0:
            raise ValueError("amount must be positive")


class Invoice(pydantic.BaseModel):
    id: int
    total: float


def message(value: bytes | None) -> Message:
    return Message(topic="orders", partition=2, offset=41, key=None, value=value)


# -- decoding ------------------------------------------------------------------------------


def test_a_message_parameter_gets_the_message_itself() -> None:
    msg = message(b"\xff raw")

    assert decoder_for(Message)(msg) is msg


def test_a_bytes_parameter_gets_the_raw_payload() -> None:
    assert decoder_for(bytes)(message(b"\xff\x00raw")) == b"\xff\x00raw"


def test_a_str_parameter_gets_the_payload_as_utf8_text() -> None:
    assert decoder_for(str)(message("héllo".encode())) == "héllo"


def test_a_dict_parameter_gets_the_json_object() -> None:
    assert decoder_for(dict)(message(b'{"id": 1, "tags": ["a"]}')) == {"id": 1, "tags": ["a"]}


@pytest.mark.parametrize("annotation", [dict[str, int], typing.Dict[str, int]], ids=repr)  # noqa: UP006
def test_a_parameterised_dict_parameter_gets_the_json_object(annotation: Any) -> None:
    assert decoder_for(annotation)(message(b'{"a": 1}')) == {"a": 1}


@pytest.mark.parametrize("annotation", [list, list[int]], ids=repr)
def test_a_list_parameter_gets_the_json_array(annotation: Any) -> None:
    assert decoder_for(annotation)(message(b"[1, 2, 3]")) == [1, 2, 3]


def test_a_dataclass_parameter_gets_an_instance_built_from_the_json_object() -> None:
    assert decoder_for(Order)(message(b'{"id": 7, "customer": "ada"}')) == Order(7, "ada")


def test_a_pydantic_parameter_gets_a_validated_model() -> None:
    invoice = decoder_for(Invoice)(message(b'{"id": "7", "total": 9.5}'))

    assert invoice == Invoice(id=7, total=9.5)


def test_a_decode_error_is_a_reject_so_it_is_never_retried() -> None:
    assert issubclass(DecodeError, Reject)


@pytest.mark.parametrize("annotation", [dict, list, Order, Invoice], ids=repr)
def test_invalid_json_is_a_decode_error_naming_the_message(annotation: Any) -> None:
    with pytest.raises(DecodeError, match=r"orders\[2\]@41"):
        decoder_for(annotation)(message(b'{"id": 1'))


@pytest.mark.parametrize("annotation", [dict, Order], ids=repr)
@pytest.mark.parametrize(
    "payload", [b' {"id": 1, "customer": "ada"}', b'{"id":1,"customer":"ada"}\r\n']
)
def test_json_with_whitespace_around_it_is_decoded(annotation: Any, payload: bytes) -> None:
    decoded = decoder_for(annotation)(message(payload))

    assert decoded == annotation(id=1, customer="ada")


@pytest.mark.parametrize("annotation", [dict, list, Order], ids=repr)
@pytest.mark.parametrize("payload", [b'{"id": 1} {"id": 2}', b"[1] x", b""])
def test_anything_but_one_json_value_is_a_decode_error(annotation: Any, payload: bytes) -> None:
    with pytest.raises(DecodeError, match="is not valid JSON"):
        decoder_for(annotation)(message(payload))


def test_deeply_nested_json_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="not valid JSON"):
        decoder_for(list)(message(b"[" * 100_000 + b"]" * 100_000))


@pytest.mark.parametrize(
    ("annotation", "payload", "found"),
    [(dict, b"[1]", "list"), (list, b'{"a": 1}', "dict"), (dict, b'"text"', "str")],
)
def test_json_of_the_wrong_type_is_a_decode_error(
    annotation: type, payload: bytes, found: str
) -> None:
    with pytest.raises(DecodeError, match=f"is a JSON {found}, expected {annotation.__name__}"):
        decoder_for(annotation)(message(payload))


@pytest.mark.parametrize("annotation", [str, dict], ids=repr)
def test_a_payload_that_is_not_utf8_is_a_decode_error(annotation: type) -> None:
    with pytest.raises(DecodeError):
        decoder_for(annotation)(message(b'{"a": "\xff\xfe"}'))


@dataclasses.dataclass
class Bill:
    id: int
    total: float


JSON_TYPES = [dict, Bill, Invoice]
OBJECT = '{"id": 7, "total": 1.5}'


@pytest.mark.parametrize("annotation", JSON_TYPES, ids=repr)
@pytest.mark.parametrize(
    ("encoding", "name"),
    [
        ("utf-16", "UTF-16"),
        ("utf-16-le", "UTF-16-LE"),
        ("utf-16-be", "UTF-16-BE"),
        ("utf-32", "UTF-32"),
        ("utf-32-be", "UTF-32-BE"),
    ],
)
def test_json_in_another_encoding_than_utf8_is_a_decode_error_naming_it(
    annotation: type, encoding: str, name: str
) -> None:
    payload = OBJECT.encode(encoding)

    with pytest.raises(DecodeError, match=f"is {name} text; JSON payloads must be UTF-8"):
        decoder_for(annotation)(message(payload))


@pytest.mark.parametrize("annotation", [*JSON_TYPES, list], ids=repr)
@pytest.mark.parametrize(
    "payload",
    [b'{"id": 7, "customer": "\xff"}', b'{"id": 7, "customer": "\xed\xa0\x80"}'],
    ids=["invalid byte", "encoded surrogate"],
)
def test_json_with_bytes_that_are_not_utf8_is_a_decode_error(
    annotation: type, payload: bytes
) -> None:
    with pytest.raises(DecodeError, match="is not UTF-8, as JSON payloads must be"):
        decoder_for(annotation)(message(payload))


@pytest.mark.parametrize("annotation", JSON_TYPES, ids=repr)
def test_a_utf8_byte_order_mark_before_json_is_ignored(annotation: type) -> None:
    plain = decoder_for(annotation)(message(OBJECT.encode()))

    assert decoder_for(annotation)(message(codecs.BOM_UTF8 + OBJECT.encode())) == plain


@pytest.mark.parametrize("annotation", JSON_TYPES, ids=repr)
def test_only_one_byte_order_mark_is_ignored(annotation: type) -> None:
    with pytest.raises(DecodeError):
        decoder_for(annotation)(message(codecs.BOM_UTF8 * 2 + OBJECT.encode()))


def test_a_str_parameter_gets_the_text_as_sent_byte_order_mark_included() -> None:
    assert decoder_for(str)(message(codecs.BOM_UTF8 + b"hi")) == "\ufeffhi"


def test_a_str_decode_error_says_the_payload_is_not_utf8() -> None:
    with pytest.raises(DecodeError, match="not UTF-8 text"):
        decoder_for(str)(message(b"\xff\xfe"))


@pytest.mark.parametrize(
    "payload",
    [b'{"id": 7}', b'{"id": 7, "customer": "ada", "extra": 1}', b"[7, 1]"],
    ids=["missing field", "unknown field", "not an object"],
)
def test_a_payload_that_does_not_fit_the_dataclass_is_a_decode_error(payload: bytes) -> None:
    with pytest.raises(DecodeError, match="Order"):
        decoder_for(Order)(message(payload))


def test_a_dataclass_refusing_the_payload_in_post_init_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="amount must be positive"):
        decoder_for(Positive)(message(b'{"amount": -1}'))


def test_a_pydantic_validation_failure_is_a_decode_error_naming_the_field() -> None:
    with pytest.raises(DecodeError, match=r"not a valid Invoice: total: .*number"):
        decoder_for(Invoice)(message(b'{"id": 1, "total": "lots"}'))


@pytest.mark.parametrize(
    "annotation", [int, set, tuple[int], Any, dict | list, dict | list | None], ids=repr
)
def test_an_unsupported_annotation_is_a_signature_error_listing_what_is_allowed(
    annotation: Any,
) -> None:
    with pytest.raises(HandlerSignatureError, match="is not supported; use Message, bytes, str"):
        decoder_for(annotation)


# -- tombstones ----------------------------------------------------------------------------

TOMBSTONE = message(None)


def test_a_message_parameter_gets_a_tombstone_with_value_none() -> None:
    assert decoder_for(Message)(TOMBSTONE).value is None
    assert decoder_for(Message)(message(b"")).value == b""  # an empty value is not a tombstone


@pytest.mark.parametrize(
    "annotation",
    [
        dict | None,
        typing.Optional[dict[str, Any]],  # noqa: UP045 - the older spelling is taken too
        list[int] | None,
        bytes | None,
        str | None,
        Order | None,
        None | Invoice,
    ],
    ids=repr,
)
def test_a_payload_type_that_admits_none_gets_none_for_a_tombstone(annotation: Any) -> None:
    assert takes_tombstones(annotation)
    assert decoder_for(annotation)(TOMBSTONE) is None


def test_a_payload_type_that_admits_none_decodes_other_values_as_its_type() -> None:
    assert decoder_for(dict | None)(message(b'{"id": 1}')) == {"id": 1}
    assert decoder_for(Order | None)(message(b'{"id": 1, "customer": "c"}')) == Order(1, "c")
    assert decoder_for(bytes | None)(message(b"")) == b""
    with pytest.raises(DecodeError, match="not valid JSON"):
        decoder_for(dict | None)(message(b"{"))


@pytest.mark.parametrize("annotation", [bytes, str, dict, list, dict[str, Any], Order, Invoice])
def test_any_other_payload_type_skips_a_tombstone(annotation: Any) -> None:
    assert not takes_tombstones(annotation)
    with pytest.raises(SkipTombstone, match=r"orders\[2\]@41 is a tombstone") as caught:
        decoder_for(annotation)(TOMBSTONE)
    assert not isinstance(caught.value, Reject)  # never dead-lettered


def test_a_message_parameter_takes_tombstones() -> None:
    assert takes_tombstones(Message)


def test_none_is_published_as_a_tombstone() -> None:
    assert encode_value(None) is None


# -- encoding ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [b"\xff\x00", bytearray(b"\xff\x00"), memoryview(b"\xff\x00")])
def test_bytes_are_published_as_they_are(value: Any) -> None:
    assert encode_value(value) == b"\xff\x00"


def test_text_is_published_as_utf8() -> None:
    assert encode_value("héllo") == "héllo".encode()


@pytest.mark.parametrize("value", [{"id": 1, "tags": ["a"]}, [1, "two", None], 3])
def test_json_values_are_published_as_compact_json(value: Any) -> None:
    encoded = encode_value(value)

    assert json.loads(encoded) == value
    assert b" " not in encoded


def test_a_dataclass_is_published_as_its_json_object() -> None:
    assert json.loads(encode_value(Order(7, "ada"))) == {"id": 7, "customer": "ada"}


def test_a_pydantic_model_is_published_as_its_json_object() -> None:
    assert json.loads(encode_value(Invoice(id=7, total=9.5))) == {"id": 7, "total": 9.5}


def test_what_is_published_decodes_back_into_the_same_type() -> None:
    assert decoder_for(Order)(message(encode_value(Order(7, "ada")))) == Order(7, "ada")
    assert decoder_for(Invoice)(message(encode_value(Invoice(id=1, total=2)))) == Invoice(
        id=1, total=2
    )


@pytest.mark.parametrize(
    "value",
    [object(), {1, 2}, {"when": dataclasses}, {"x": float("nan")}, [float("inf")], Invoice],
    ids=["object", "set", "module", "nan", "inf", "model class"],
)
def test_a_value_that_is_not_json_serialisable_is_a_publish_error(value: Any) -> None:
    with pytest.raises(PublishError, match="cannot publish a"):
        encode_value(value)


def test_a_self_referencing_value_is_a_publish_error() -> None:
    loop: list[Any] = []
    loop.append(loop)

    with pytest.raises(PublishError):
        encode_value(loop)


@pytest.mark.parametrize(
    ("key", "expected"), [(None, None), (b"k\xff", b"k\xff"), ("clé", "clé".encode())]
)
def test_a_key_is_bytes_text_as_utf8_or_none(key: Any, expected: bytes | None) -> None:
    assert encode_key(key) == expected


@pytest.mark.parametrize("key", [42, {"id": 1}], ids=repr)
def test_a_key_of_another_type_is_a_publish_error(key: Any) -> None:
    with pytest.raises(PublishError, match="key is bytes, str or None"):
        encode_key(key)


def test_headers_from_a_mapping_become_name_and_bytes_pairs() -> None:
    assert encode_headers({"trace": "abc", "raw": b"\x00"}) == (
        ("trace", b"abc"),
        ("raw", b"\x00"),
    )


def test_headers_from_pairs_keep_their_order_and_repeats() -> None:
    assert encode_headers([("a", "1"), ("b", b"2"), ("a", "3")]) == (
        ("a", b"1"),
        ("b", b"2"),
        ("a", b"3"),
    )


@pytest.mark.parametrize("headers", [None, {}, []], ids=repr)
def test_no_headers_are_an_empty_tuple(headers: Any) -> None:
    assert encode_headers(headers) == ()


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({1: "x"}, "header names are str, got int"),
        ([(b"trace", "x")], "header names are str, got bytes"),
        ({"trace": 42}, "header 'trace' must be str or bytes, got int"),
        ({"trace": None}, "header 'trace' must be str or bytes, got NoneType"),
        ([("trace",)], r"a header is a \(name, value\) pair"),
        (["ab"], r"a header is a \(name, value\) pair"),
        ("trace=x", r"headers are a mapping or \(name, value\) pairs"),
        (42, r"headers are a mapping or \(name, value\) pairs"),
    ],
    ids=repr,
)
def test_bad_headers_are_a_publish_error(headers: Any, message: str) -> None:
    with pytest.raises(PublishError, match=message):
        encode_headers(headers)


# -- msgspec Structs -----------------------------------------------------------------------


class Line(msgspec.Struct):
    sku: str
    quantity: int


class Basket(msgspec.Struct):
    id: int
    lines: list[Line]


def test_a_struct_parameter_gets_a_validated_struct() -> None:
    payload = b'{"id": 7, "lines": [{"sku": "a", "quantity": 2}]}'

    assert decoder_for(Basket)(message(payload)) == Basket(7, [Line("a", 2)])


def test_a_struct_validation_failure_is_a_decode_error_naming_the_field_path() -> None:
    payload = b'{"id": 7, "lines": [{"sku": "a", "quantity": "two"}]}'

    with pytest.raises(DecodeError, match=r"not a valid Basket: .*`\$\.lines\[0\]\.quantity`"):
        decoder_for(Basket)(message(payload))


def test_a_struct_missing_a_field_is_a_decode_error_naming_it() -> None:
    with pytest.raises(DecodeError, match="not a valid Basket: Object missing required field `id`"):
        decoder_for(Basket)(message(b'{"lines": []}'))


@pytest.mark.parametrize("payload", [b'{"id": 7', b"", b"\xef\xbb\xbf" * 2 + b"{}"])
def test_a_struct_payload_that_is_not_json_is_a_decode_error(payload: bytes) -> None:
    with pytest.raises(DecodeError, match=r"orders\[2\]@41 is not valid JSON"):
        decoder_for(Basket)(message(payload))


def test_a_struct_payload_after_a_byte_order_mark_is_decoded() -> None:
    payload = codecs.BOM_UTF8 + b'{"id": 7, "lines": []}'

    assert decoder_for(Basket)(message(payload)) == Basket(7, [])


def test_a_struct_payload_in_utf16_is_a_decode_error_naming_it() -> None:
    with pytest.raises(DecodeError, match="is UTF-16 text; JSON payloads must be UTF-8"):
        decoder_for(Basket)(message('{"id": 7, "lines": []}'.encode("utf-16")))


def test_a_struct_is_published_as_its_json_object_and_decodes_back() -> None:
    basket = Basket(7, [Line("a", 2)])
    encoded = encode_value(basket)

    assert json.loads(encoded) == {"id": 7, "lines": [{"sku": "a", "quantity": 2}]}
    assert decoder_for(Basket)(message(encoded)) == basket


def test_a_struct_inside_a_published_dict_is_encoded_as_its_object() -> None:
    assert json.loads(encode_value({"line": Line("a", 1)})) == {"line": {"sku": "a", "quantity": 1}}


@pytest.mark.parametrize("codec", [JSON, MSGPACK], ids=repr)
def test_a_list_of_structs_is_decoded_and_validated_whole(codec: Any) -> None:
    decode = decoder_for(list[Line], codec)
    good = codec.encode([{"sku": "a", "quantity": 1}, {"sku": "b", "quantity": 2}])
    bad = codec.encode([{"sku": "a", "quantity": 1}, {"sku": "b"}])

    assert decode(message(good)) == [Line("a", 1), Line("b", 2)]
    with pytest.raises(
        DecodeError, match=r"Object missing required field `quantity` - at `\$\[1\]`"
    ):
        decode(message(bad))


def test_a_dict_of_structs_is_decoded_and_validated_whole() -> None:
    decode = decoder_for(dict[str, list[Line]])

    assert decode(message(b'{"x": [{"sku": "a", "quantity": 1}]}')) == {"x": [Line("a", 1)]}
    # msgspec names a dict's value by `[...]`, not by its key
    with pytest.raises(DecodeError, match=r"got `str` - at `\$\[\.\.\.\]\[0\]\.quantity`"):
        decode(message(b'{"x": [{"sku": "a", "quantity": "1"}]}'))


def test_a_struct_admitting_none_gets_none_for_a_tombstone() -> None:
    assert decoder_for(Basket | None)(TOMBSTONE) is None
    with pytest.raises(SkipTombstone):
        decoder_for(Basket)(TOMBSTONE)


# -- MessagePack ---------------------------------------------------------------------------


def packed(value: Any) -> Message:
    return message(msgspec.msgpack.encode(value))


@pytest.mark.parametrize(
    ("annotation", "value", "expected"),
    [
        (dict, {"id": 7, "customer": "ada"}, {"id": 7, "customer": "ada"}),
        (list[int], [1, 2], [1, 2]),
        (Order, {"id": 7, "customer": "ada"}, Order(7, "ada")),
        (Basket, {"id": 7, "lines": [{"sku": "a", "quantity": 2}]}, Basket(7, [Line("a", 2)])),
        (Invoice, {"id": "7", "total": 9.5}, Invoice(id=7, total=9.5)),
    ],
    ids=repr,
)
def test_msgpack_payloads_decode_into_the_handler_type(
    annotation: Any, value: Any, expected: Any
) -> None:
    assert decoder_for(annotation, MSGPACK)(packed(value)) == expected


@pytest.mark.parametrize(
    "value", [{"id": 7, "customer": "ada"}, Order(7, "ada"), Basket(7, []), Invoice(id=1, total=2)]
)
def test_msgpack_values_round_trip(value: Any) -> None:
    encoded = encode_value(value, MSGPACK)

    assert decoder_for(type(value), MSGPACK)(message(encoded)) == value
    assert encoded != encode_value(value)  # not JSON


@pytest.mark.parametrize(
    ("annotation", "payload", "error"),
    [
        (dict, b"\xc1", r"orders\[2\]@41 is not valid MessagePack"),
        (dict, msgspec.msgpack.encode([1]), "is a MessagePack list, expected dict"),
        (Order, msgspec.msgpack.encode({"id": 7}), "does not fit Order"),
        (
            Basket,
            msgspec.msgpack.encode({"id": "x", "lines": []}),
            r"not a valid Basket: .*`\$\.id`",
        ),
        (Invoice, msgspec.msgpack.encode({"id": 1, "total": "lots"}), "not a valid Invoice: total"),
    ],
    ids=["malformed", "wrong kind", "dataclass", "struct", "pydantic"],
)
def test_msgpack_payloads_that_do_not_fit_are_decode_errors(
    annotation: Any, payload: bytes, error: str
) -> None:
    with pytest.raises(DecodeError, match=error):
        decoder_for(annotation, MSGPACK)(message(payload))


def test_a_value_msgpack_cannot_hold_is_a_publish_error() -> None:
    with pytest.raises(PublishError, match="as MessagePack"):
        encode_value(object(), MSGPACK)


# -- content types -------------------------------------------------------------------------


def typed(value: bytes | None, content_type: bytes, *before: tuple[str, bytes]) -> Message:
    return message(value)._replace(headers=(*before, ("content-type", content_type)))


def test_an_encoded_value_carries_its_codecs_content_type_after_the_callers_headers() -> None:
    assert encode_record({"id": 1}, (("trace", b"t"),)) == (
        b'{"id":1}',
        (("trace", b"t"), ("content-type", b"application/json")),
    )
    assert encode_record({"id": 1}, (), MSGPACK)[1] == (("content-type", b"application/msgpack"),)


def test_an_encoded_value_replaces_a_content_type_the_caller_gave() -> None:
    _, headers = encode_record({"id": 1}, (("content-type", b"text/plain"),), MSGPACK)

    assert headers == (("content-type", b"application/msgpack"),)


@pytest.mark.parametrize("value", [b"raw", "text", None], ids=repr)
def test_bytes_text_and_tombstones_carry_no_content_type(value: Any) -> None:
    assert encode_record(value, (("content-type", b"text/csv"),))[1] == (
        ("content-type", b"text/csv"),
    )


@pytest.mark.parametrize(
    "content_type", [b"application/json", b"Application/JSON; charset=utf-8"], ids=repr
)
def test_a_record_naming_the_registrations_own_content_type_is_read_with_it(
    content_type: bytes,
) -> None:
    assert decoder_for(dict)(typed(b'{"a": 1}', content_type)) == {"a": 1}


def test_a_record_naming_another_codec_of_the_app_is_read_with_that_codec() -> None:
    record = typed(msgspec.msgpack.encode({"id": 7, "lines": []}), b"application/msgpack")

    assert decoder_for(Basket)(record) == Basket(7, [])
    assert decoder_for(dict, JSON)(record) == {"id": 7, "lines": []}


def test_the_last_content_type_header_counts() -> None:
    record = typed(b'{"a": 1}', b"application/json", ("content-type", b"application/msgpack"))

    assert decoder_for(dict, MSGPACK)(record) == {"a": 1}


def test_a_record_without_the_header_is_read_with_the_registrations_codec() -> None:
    record = message(msgspec.msgpack.encode({"a": 1}))._replace(headers=(("trace", b"t"),))

    assert decoder_for(dict, MSGPACK)(record) == {"a": 1}


@pytest.mark.parametrize("empty", [b"", b"  ", b"; charset=utf-8"], ids=repr)
def test_a_content_type_header_naming_no_type_is_read_as_if_it_were_absent(empty: bytes) -> None:
    # A null header value reaches the handler as empty bytes on Kafka.
    record = typed(msgspec.msgpack.encode({"a": 1}), empty)

    assert decoder_for(dict, MSGPACK)(record) == {"a": 1}


def test_content_types_that_differ_only_in_parameters_do_not_grow_a_decoder() -> None:
    decode = decoder_for(dict)
    records = [typed(b"\x81\xa1a\x01", b"application/msgpack; n=%d" % n) for n in range(20_000)]
    decode(records[0])  # the codec's reading of its first record is made once, and kept
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        assert all(decode(record) == {"a": 1} for record in records)
        grown = tracemalloc.take_snapshot().compare_to(before, "filename")
    finally:
        tracemalloc.stop()

    # Each distinct value kept would be some 100 bytes: 2 MB for these records.
    assert sum(stat.size_diff for stat in grown) < 200_000


def test_a_content_type_the_app_has_no_codec_for_is_a_decode_error_naming_it() -> None:
    with pytest.raises(
        DecodeError,
        match=r"orders\[2\]@41 has content-type 'application/avro', which this app has no "
        r"codec for \(it reads application/json, application/msgpack\)",
    ):
        decoder_for(dict)(typed(b"\x00", b"application/avro"))


def test_a_content_type_that_is_not_ascii_is_named_by_its_bytes_escaped_once() -> None:
    with pytest.raises(DecodeError) as caught:
        decoder_for(dict)(typed(b"{}", b"app\xff\xfe\nx"))

    assert "has content-type 'app\\xff\\xfe\\nx', which this app has no codec for" in str(
        caught.value
    )


def test_raw_payload_types_take_any_content_type() -> None:
    record = typed(b"\x00x", b"application/avro")

    assert decoder_for(bytes)(record) == b"\x00x"
    assert decoder_for(str)(record) == "\x00x"
    assert decoder_for(Message)(record) is record


class Csv:
    """A codec of the app's own: comma-separated text, read as a list of str."""

    content_type = "text/csv"

    def decoder(self, annotation: Any) -> Any:
        if annotation is not list:
            raise TypeError("CSV is read as a list")

        def decode(value: bytes) -> list[str]:
            text = value.decode()
            if not text:
                raise ValueError("empty line")
            return text.split(",")

        return decode

    def encode(self, value: Any) -> bytes:
        return ",".join(value).encode()


def test_a_codec_of_the_apps_own_reads_and_writes_its_content_type() -> None:
    csv, registry = Csv(), Codecs([Csv()])
    payload, headers = encode_record(["a", "b"], (), csv)

    assert (payload, headers) == (b"a,b", (("content-type", b"text/csv"),))
    assert decoder_for(list, csv, registry)(message(payload)) == ["a", "b"]
    assert decoder_for(list, JSON, registry)(typed(payload, b"text/csv")) == ["a", "b"]


def test_a_failure_of_an_apps_own_codec_is_a_decode_error_naming_the_record() -> None:
    with pytest.raises(DecodeError, match=r"payload of orders\[2\]@41 is not valid text/csv"):
        decoder_for(list, Csv())(message(b""))


def test_a_payload_type_an_apps_codec_does_not_read_is_a_signature_error() -> None:
    with pytest.raises(HandlerSignatureError, match="not read by the text/csv codec"):
        decoder_for(dict, Csv())


def test_a_record_of_a_codec_that_does_not_read_the_payload_type_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="content-type 'text/csv', which cannot be read as dict"):
        decoder_for(dict, JSON, Codecs([Csv()]))(typed(b"a,b", b"text/csv"))


def test_two_codecs_of_one_content_type_are_a_configuration_error() -> None:
    class OtherCsv(Csv):
        pass

    with pytest.raises(ConfigurationError, match="two codecs for text/csv"):
        Codecs([Csv(), OtherCsv()])


def test_codecs_of_one_class_are_taken_for_one_format() -> None:
    first = Csv()

    assert Codecs([first, Csv()]).get("text/csv") is first


def test_the_built_in_codecs_are_values() -> None:
    assert Codecs([MsgpackCodec(), MsgpackCodec()]).get("application/msgpack") == MSGPACK


@pytest.mark.parametrize("codec", [object(), "application/json"], ids=repr)
def test_something_that_is_not_a_codec_is_a_configuration_error(codec: Any) -> None:
    with pytest.raises(ConfigurationError, match="is not a codec"):
        Codecs([codec])


def test_a_codec_class_in_place_of_a_codec_is_a_configuration_error_saying_so() -> None:
    with pytest.raises(ConfigurationError, match=r"pass an instance, MsgpackCodec\(\)"):
        Codecs([MsgpackCodec])  # type: ignore[list-item]


def test_a_codec_whose_encode_returns_no_bytes_is_a_publish_error() -> None:
    class Lazy(Csv):
        def encode(self, value: Any) -> bytes:
            return ",".join(value)  # type: ignore[return-value]

    with pytest.raises(PublishError, match="a codec's encode returns bytes"):
        encode_record(["a"], (), Lazy())
