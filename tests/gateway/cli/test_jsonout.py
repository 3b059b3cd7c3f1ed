"""`gateway.cli.jsonout` on the generated messages the CLI prints: snake_case keys, every field present, 64-bit
integers as exact JSON numbers at any depth (repeated, nested, map values, oneof members), enums by name, bytes as
base64, unset presence fields as null."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from typing import Any

from google.protobuf.message import Message
from privacy_gateway.v1 import admin_service_pb2 as a_pb
from privacy_gateway.v1 import catalog_service_pb2 as cat_pb
from privacy_gateway.v1 import verification_service_pb2 as v_pb

from gateway.cli.jsonout import message_to_json, message_to_json_obj
from gateway.settings import ROOT

BIG = 2**53 + 1  # not representable as a float: a float round trip would give 2**53
HUGE_U64 = 2**64 - 1
MOST_NEGATIVE = -(2**63)


def _round_trip(message: Message) -> Any:
    """What a script reading the CLI's output sees (Python's json parses integers exactly)."""
    return json.loads(message_to_json(message))


def test_64_bit_integers_stay_exact_numbers_at_every_depth() -> None:
    receipt = v_pb.VerificationReceipt(payload=b"\x00\xffpayload", signature=b"sig", key_id="k1",
                                       leaf_index=HUGE_U64, tree_size=BIG)
    batch = v_pb.ClaimResult(index=BIG, status=v_pb.CLAIM_STATUS_CAP_EXHAUSTED,
                             result=v_pb.VERIFICATION_RESULT_NO_MATCH, receipt=receipt)
    doc = _round_trip(batch)
    assert doc["index"] == BIG and type(doc["index"]) is int
    nested = doc["receipt"]
    assert nested["leaf_index"] == HUGE_U64 and nested["tree_size"] == BIG
    assert base64.b64decode(nested["payload"]) == b"\x00\xffpayload"  # bytes: protobuf's base64
    assert nested["audit_path"] == ""
    assert doc["status"] == "CLAIM_STATUS_CAP_EXHAUSTED" and doc["result"] == "VERIFICATION_RESULT_NO_MATCH"
    assert doc["status_message"] == "" and doc["band"] == ""
    # the text itself carries the digits, not a quoted string or a float
    assert f'"index": {BIG},' in message_to_json(batch)


def test_repeated_map_and_oneof_values() -> None:
    template = v_pb.Template(
        dataset="registry", name="income_band", max_checks_per_period=BIG, max_checks_per_subject_per_period=3,
        parameters=[v_pb.TemplateParameter(name="floor", type="int64",
                                           ladder=[v_pb.ParamValue(int64_value=BIG),
                                                   v_pb.ParamValue(int64_value=MOST_NEGATIVE),
                                                   v_pb.ParamValue(double_value=0.5)])])
    doc = _round_trip(v_pb.ListTemplatesResponse(templates=[template]))
    [t] = doc["templates"]
    assert t["max_checks_per_period"] == BIG and t["max_checks_per_subject_per_period"] == 3
    [p] = t["parameters"]
    # a oneof shows the member that is set, and only that one
    assert p["ladder"] == [{"int64_value": BIG}, {"int64_value": MOST_NEGATIVE}, {"double_value": 0.5}]
    assert p["allowed"] == [] and p["max_length"] == 0
    assert t["band_labels"] == [] and t["not_found_as_no_match"] is False

    claim = v_pb.Claim(subject="S1", parameters={"income": v_pb.ParamValue(int64_value=BIG),
                                                 "city": v_pb.ParamValue(string_value="Oslo")})
    assert _round_trip(claim)["parameters"] == {"income": {"int64_value": BIG}, "city": {"string_value": "Oslo"}}


def test_every_field_is_present_in_declaration_order_and_unset_presence_is_null() -> None:
    doc = message_to_json_obj(v_pb.ClaimResult())
    assert list(doc) == [f.name for f in v_pb.ClaimResult.DESCRIPTOR.fields]
    assert doc["index"] == 0 and doc["status"] == "CLAIM_STATUS_OK" and doc["receipt"] is None
    # proto3 `optional` scalars: null when unset, the number when set (also when set to zero)
    unset = message_to_json_obj(a_pb.AdjustGrantRequest(organization="bank"))
    assert unset["epsilon"] is None and unset["rho"] is None and unset["clear"] is False
    assert message_to_json_obj(a_pb.AdjustGrantRequest(epsilon=0.0))["epsilon"] == 0.0
    # an unset oneof prints none of its members
    assert message_to_json_obj(v_pb.ParamValue()) == {}


def test_names_are_the_protos_snake_case() -> None:
    table = cat_pb.Table(name="residents", max_rows_per_unit=BIG)
    doc = _round_trip(table)
    assert doc["max_rows_per_unit"] == BIG and "maxRowsPerUnit" not in doc
    assert set(doc) == {f.name for f in cat_pb.Table.DESCRIPTOR.fields}


def test_importing_the_helper_loads_no_protobuf() -> None:
    code = "import sys, gateway.cli.jsonout; print([m for m in sys.modules if m.startswith(('google', 'grpc'))])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_well_known_types_keep_protobufs_mapping_and_int64_wrappers_are_numbers() -> None:
    from google.protobuf import duration_pb2, timestamp_pb2, wrappers_pb2

    assert message_to_json_obj(timestamp_pb2.Timestamp(seconds=1_700_000_000)) == "2023-11-14T22:13:20Z"
    assert message_to_json_obj(duration_pb2.Duration(seconds=90, nanos=500_000_000)) == "90.500s"
    assert message_to_json_obj(wrappers_pb2.Int64Value(value=BIG)) == BIG
    assert message_to_json_obj(wrappers_pb2.UInt64Value(value=HUGE_U64)) == HUGE_U64


def test_well_known_types_inside_a_message() -> None:
    """No service message carries a Timestamp yet, so a message built at run time stands in for a future one."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2, wrappers_pb2

    pool = descriptor_pool.DescriptorPool()
    for dep in (timestamp_pb2, wrappers_pb2):
        pool.AddSerializedFile(dep.DESCRIPTOR.serialized_pb)
    f = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="jsonout_test.proto", package="jsonout_test", syntax="proto3",
        dependency=["google/protobuf/timestamp.proto", "google/protobuf/wrappers.proto"])
    proto.message_type.add(name="Event", field=[
        f(name="at", number=1, type=f.TYPE_MESSAGE, type_name=".google.protobuf.Timestamp", label=f.LABEL_OPTIONAL),
        f(name="total", number=2, type=f.TYPE_MESSAGE, type_name=".google.protobuf.Int64Value",
          label=f.LABEL_OPTIONAL),
        f(name="seqs", number=3, type=f.TYPE_SFIXED64, label=f.LABEL_REPEATED)])
    pool.Add(proto)
    event_cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("jsonout_test.Event"))
    event: Any = event_cls()
    event.seqs.extend([MOST_NEGATIVE, BIG])
    event.at.seconds = 1_700_000_000
    event.total.value = BIG
    assert _round_trip(event) == {"at": "2023-11-14T22:13:20Z", "total": BIG, "seqs": [MOST_NEGATIVE, BIG]}
    assert _round_trip(event_cls()) == {"at": None, "total": None, "seqs": []}


def test_a_printed_model_answer_is_still_a_receipt_file() -> None:
    """`pgw train --json > f.json; pgw receipt verify f.json`: the receipt reader takes the snake_case shape."""
    from privacy_gateway.v1 import model_service_pb2 as m_pb
    from privacy_gateway.v1 import receipt_pb2

    from pgw_client.receipts import Receipt

    signed = receipt_pb2.Receipt(payload_json='{"type":"privacy_gateway.receipt"}', signature=b"\x01\x02",
                                 key_id="abcd")
    doc = _round_trip(m_pb.TrainModelResponse(receipt=signed))
    assert doc["receipt"] == {"payload_json": signed.payload_json, "signature": "AQI=", "key_id": "abcd"}
    back = Receipt.from_json(doc)
    assert (back.kind, back.payload_bytes, back.signature, back.key_id) == (
        "release", signed.payload_json.encode(), b"\x01\x02", "abcd")
