"""Conversions between the `wtabridge.v1` protobuf messages and the pydantic result types."""

from __future__ import annotations

from pydantic import Field

from reasoning.engine import Answer

from ._proto import symbols_pb2 as pb
from .schema import Attribute, Candidate, DetectedObject, Extraction

__all__ = ["ServedExtraction", "answer_from_proto", "answer_to_proto", "extraction_from_proto", "extraction_to_proto"]


class ServedExtraction(Extraction):
    """An extraction together with its facts as ASP text, as the service returns it."""

    facts: str = Field("", description="one fact per line: object/1, shape/2, colour/2, position/3, ...")


def _set_value(message, value: str | int) -> None:
    # bool is an int in Python but never a symbol value; keep it out of the number field.
    if isinstance(value, int) and not isinstance(value, bool):
        message.number = value
    else:
        message.symbol = str(value)


def _get_value(message) -> str | int:
    return message.number if message.WhichOneof("value") == "number" else message.symbol


def extraction_to_proto(extraction: Extraction, facts: str) -> pb.Extraction:
    message = pb.Extraction(image=extraction.image, width=extraction.width, height=extraction.height, facts=facts)
    for obj in extraction.objects:
        detected = message.objects.add(id=obj.id)
        for name, attribute in obj.attributes.items():
            item = detected.attributes.add(name=name, confidence=attribute.confidence)
            _set_value(item, attribute.value)
            for candidate in attribute.candidates:
                option = item.candidates.add(probability=candidate.probability)
                _set_value(option, candidate.value)
    return message


def extraction_from_proto(message: pb.Extraction) -> ServedExtraction:
    objects = []
    for detected in message.objects:
        attributes = {
            item.name: Attribute(
                value=_get_value(item),
                confidence=item.confidence,
                candidates=[Candidate(value=_get_value(c), probability=c.probability) for c in item.candidates],
            )
            for item in detected.attributes
        }
        objects.append(DetectedObject(id=detected.id, attributes=attributes))
    return ServedExtraction(
        image=message.image, width=message.width, height=message.height, objects=objects, facts=message.facts
    )


def answer_to_proto(answer: Answer, extraction: pb.Extraction) -> pb.ImageAnswer:
    message = pb.ImageAnswer(
        extraction=extraction, exhausted=answer.exhausted, warnings=answer.warnings, seconds=answer.seconds
    )
    if answer.satisfiable is not None:
        message.satisfiable = answer.satisfiable
    for model in answer.models:
        message.answer_sets.add(atoms=model)
    if answer.certain is not None or answer.possible is not None:
        message.consequences.SetInParent()  # present even when both lists are empty
        message.consequences.certain.extend(answer.certain or [])
        message.consequences.possible.extend(answer.possible or [])
    return message


def answer_from_proto(message: pb.ImageAnswer) -> Answer:
    has_consequences = message.HasField("consequences")
    return Answer(
        satisfiable=message.satisfiable if message.HasField("satisfiable") else None,
        models=[list(answer_set.atoms) for answer_set in message.answer_sets],
        certain=list(message.consequences.certain) if has_consequences else None,
        possible=list(message.consequences.possible) if has_consequences else None,
        exhausted=message.exhausted,
        warnings=list(message.warnings),
        seconds=message.seconds,
    )
