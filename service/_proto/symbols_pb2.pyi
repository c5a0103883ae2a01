from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExtractRequest(_message.Message):
    __slots__ = ("id", "image")
    ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    id: str
    image: bytes
    def __init__(self, id: _Optional[str] = ..., image: _Optional[bytes] = ...) -> None: ...

class ExtractResponse(_message.Message):
    __slots__ = ("id", "extraction", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    EXTRACTION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: str
    extraction: Extraction
    error: ItemError
    def __init__(self, id: _Optional[str] = ..., extraction: _Optional[_Union[Extraction, _Mapping]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ...) -> None: ...

class ItemError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Extraction(_message.Message):
    __slots__ = ("image", "width", "height", "objects", "facts")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    FACTS_FIELD_NUMBER: _ClassVar[int]
    image: str
    width: int
    height: int
    objects: _containers.RepeatedCompositeFieldContainer[DetectedObject]
    facts: str
    def __init__(self, image: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., objects: _Optional[_Iterable[_Union[DetectedObject, _Mapping]]] = ..., facts: _Optional[str] = ...) -> None: ...

class DetectedObject(_message.Message):
    __slots__ = ("id", "attributes")
    ID_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    id: str
    attributes: _containers.RepeatedCompositeFieldContainer[Attribute]
    def __init__(self, id: _Optional[str] = ..., attributes: _Optional[_Iterable[_Union[Attribute, _Mapping]]] = ...) -> None: ...

class Attribute(_message.Message):
    __slots__ = ("name", "symbol", "number", "confidence", "candidates")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    name: str
    symbol: str
    number: int
    confidence: float
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    def __init__(self, name: _Optional[str] = ..., symbol: _Optional[str] = ..., number: _Optional[int] = ..., confidence: _Optional[float] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("symbol", "number", "probability")
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    number: int
    probability: float
    def __init__(self, symbol: _Optional[str] = ..., number: _Optional[int] = ..., probability: _Optional[float] = ...) -> None: ...

class QueryRequest(_message.Message):
    __slots__ = ("id", "images", "program", "show", "models", "consequences")
    ID_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    SHOW_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    CONSEQUENCES_FIELD_NUMBER: _ClassVar[int]
    id: str
    images: _containers.RepeatedCompositeFieldContainer[ExtractRequest]
    program: str
    show: _containers.RepeatedScalarFieldContainer[str]
    models: int
    consequences: bool
    def __init__(self, id: _Optional[str] = ..., images: _Optional[_Iterable[_Union[ExtractRequest, _Mapping]]] = ..., program: _Optional[str] = ..., show: _Optional[_Iterable[str]] = ..., models: _Optional[int] = ..., consequences: _Optional[bool] = ...) -> None: ...

class QueryResponse(_message.Message):
    __slots__ = ("id", "results")
    ID_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    results: _containers.RepeatedCompositeFieldContainer[ImageAnswer]
    def __init__(self, id: _Optional[str] = ..., results: _Optional[_Iterable[_Union[ImageAnswer, _Mapping]]] = ...) -> None: ...

class ImageAnswer(_message.Message):
    __slots__ = ("extraction", "satisfiable", "answer_sets", "consequences", "exhausted", "warnings", "seconds")
    EXTRACTION_FIELD_NUMBER: _ClassVar[int]
    SATISFIABLE_FIELD_NUMBER: _ClassVar[int]
    ANSWER_SETS_FIELD_NUMBER: _ClassVar[int]
    CONSEQUENCES_FIELD_NUMBER: _ClassVar[int]
    EXHAUSTED_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    extraction: Extraction
    satisfiable: bool
    answer_sets: _containers.RepeatedCompositeFieldContainer[AnswerSet]
    consequences: Consequences
    exhausted: bool
    warnings: _containers.RepeatedScalarFieldContainer[str]
    seconds: float
    def __init__(self, extraction: _Optional[_Union[Extraction, _Mapping]] = ..., satisfiable: _Optional[bool] = ..., answer_sets: _Optional[_Iterable[_Union[AnswerSet, _Mapping]]] = ..., consequences: _Optional[_Union[Consequences, _Mapping]] = ..., exhausted: _Optional[bool] = ..., warnings: _Optional[_Iterable[str]] = ..., seconds: _Optional[float] = ...) -> None: ...

class AnswerSet(_message.Message):
    __slots__ = ("atoms",)
    ATOMS_FIELD_NUMBER: _ClassVar[int]
    atoms: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, atoms: _Optional[_Iterable[str]] = ...) -> None: ...

class Consequences(_message.Message):
    __slots__ = ("certain", "possible")
    CERTAIN_FIELD_NUMBER: _ClassVar[int]
    POSSIBLE_FIELD_NUMBER: _ClassVar[int]
    certain: _containers.RepeatedScalarFieldContainer[str]
    possible: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, certain: _Optional[_Iterable[str]] = ..., possible: _Optional[_Iterable[str]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model", "world", "input_width", "input_height", "provider", "symbol_table", "limits")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WORLD_FIELD_NUMBER: _ClassVar[int]
    INPUT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    INPUT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_TABLE_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    model: str
    world: str
    input_width: int
    input_height: int
    provider: str
    symbol_table: str
    limits: Limits
    def __init__(self, model: _Optional[str] = ..., world: _Optional[str] = ..., input_width: _Optional[int] = ..., input_height: _Optional[int] = ..., provider: _Optional[str] = ..., symbol_table: _Optional[str] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_message_bytes", "max_pixels", "max_batch_size", "max_batch_delay_ms", "max_concurrent_rpcs", "max_query_images", "max_program_bytes", "solve_timeout_s", "solve_memory_mib", "max_answer_sets", "max_atoms")
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_RPCS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUERY_IMAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_PROGRAM_BYTES_FIELD_NUMBER: _ClassVar[int]
    SOLVE_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    SOLVE_MEMORY_MIB_FIELD_NUMBER: _ClassVar[int]
    MAX_ANSWER_SETS_FIELD_NUMBER: _ClassVar[int]
    MAX_ATOMS_FIELD_NUMBER: _ClassVar[int]
    max_message_bytes: int
    max_pixels: int
    max_batch_size: int
    max_batch_delay_ms: float
    max_concurrent_rpcs: int
    max_query_images: int
    max_program_bytes: int
    solve_timeout_s: float
    solve_memory_mib: int
    max_answer_sets: int
    max_atoms: int
    def __init__(self, max_message_bytes: _Optional[int] = ..., max_pixels: _Optional[int] = ..., max_batch_size: _Optional[int] = ..., max_batch_delay_ms: _Optional[float] = ..., max_concurrent_rpcs: _Optional[int] = ..., max_query_images: _Optional[int] = ..., max_program_bytes: _Optional[int] = ..., solve_timeout_s: _Optional[float] = ..., solve_memory_mib: _Optional[int] = ..., max_answer_sets: _Optional[int] = ..., max_atoms: _Optional[int] = ...) -> None: ...
