from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_KIND_UNSPECIFIED: _ClassVar[TaskKind]
    BUNDLE: _ClassVar[TaskKind]
    FUNCTION: _ClassVar[TaskKind]

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    SUCCEEDED: _ClassVar[Outcome]
    FAILED: _ClassVar[Outcome]
    TIMEOUT: _ClassVar[Outcome]
    CANCELLED: _ClassVar[Outcome]
TASK_KIND_UNSPECIFIED: TaskKind
BUNDLE: TaskKind
FUNCTION: TaskKind
OUTCOME_UNSPECIFIED: Outcome
SUCCEEDED: Outcome
FAILED: Outcome
TIMEOUT: Outcome
CANCELLED: Outcome

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Requirements(_message.Message):
    __slots__ = ("cpu", "memory_mb", "gpu", "labels")
    CPU_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    GPU_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    cpu: int
    memory_mb: int
    gpu: int
    labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, cpu: _Optional[int] = ..., memory_mb: _Optional[int] = ..., gpu: _Optional[int] = ..., labels: _Optional[_Iterable[str]] = ...) -> None: ...

class LoginRequest(_message.Message):
    __slots__ = ("username", "password")
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    username: str
    password: str
    def __init__(self, username: _Optional[str] = ..., password: _Optional[str] = ...) -> None: ...

class TokenReply(_message.Message):
    __slots__ = ("token", "expires_at", "user")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    token: str
    expires_at: float
    user: User
    def __init__(self, token: _Optional[str] = ..., expires_at: _Optional[float] = ..., user: _Optional[_Union[User, _Mapping]] = ...) -> None: ...

class User(_message.Message):
    __slots__ = ("username", "role", "credits", "created_at", "disabled")
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    DISABLED_FIELD_NUMBER: _ClassVar[int]
    username: str
    role: str
    credits: int
    created_at: float
    disabled: bool
    def __init__(self, username: _Optional[str] = ..., role: _Optional[str] = ..., credits: _Optional[int] = ..., created_at: _Optional[float] = ..., disabled: _Optional[bool] = ...) -> None: ...

class CreateUserRequest(_message.Message):
    __slots__ = ("username", "password", "role", "credits")
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    username: str
    password: str
    role: str
    credits: int
    def __init__(self, username: _Optional[str] = ..., password: _Optional[str] = ..., role: _Optional[str] = ..., credits: _Optional[int] = ...) -> None: ...

class UsernameRequest(_message.Message):
    __slots__ = ("username",)
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    username: str
    def __init__(self, username: _Optional[str] = ...) -> None: ...

class SetPasswordRequest(_message.Message):
    __slots__ = ("username", "password", "old_password")
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    OLD_PASSWORD_FIELD_NUMBER: _ClassVar[int]
    username: str
    password: str
    old_password: str
    def __init__(self, username: _Optional[str] = ..., password: _Optional[str] = ..., old_password: _Optional[str] = ...) -> None: ...

class ChangePasswordRequest(_message.Message):
    __slots__ = ("old_password", "new_password")
    OLD_PASSWORD_FIELD_NUMBER: _ClassVar[int]
    NEW_PASSWORD_FIELD_NUMBER: _ClassVar[int]
    old_password: str
    new_password: str
    def __init__(self, old_password: _Optional[str] = ..., new_password: _Optional[str] = ...) -> None: ...

class UserList(_message.Message):
    __slots__ = ("users",)
    USERS_FIELD_NUMBER: _ClassVar[int]
    users: _containers.RepeatedCompositeFieldContainer[User]
    def __init__(self, users: _Optional[_Iterable[_Union[User, _Mapping]]] = ...) -> None: ...

class Balance(_message.Message):
    __slots__ = ("username", "credits")
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    username: str
    credits: int
    def __init__(self, username: _Optional[str] = ..., credits: _Optional[int] = ...) -> None: ...

class TransferRequest(_message.Message):
    __slots__ = ("to_username", "amount")
    TO_USERNAME_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    to_username: str
    amount: int
    def __init__(self, to_username: _Optional[str] = ..., amount: _Optional[int] = ...) -> None: ...

class WorkerTokenRequest(_message.Message):
    __slots__ = ("node_id", "ttl")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    ttl: float
    def __init__(self, node_id: _Optional[str] = ..., ttl: _Optional[float] = ...) -> None: ...

class GrantRequest(_message.Message):
    __slots__ = ("username", "amount")
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    username: str
    amount: int
    def __init__(self, username: _Optional[str] = ..., amount: _Optional[int] = ...) -> None: ...

class WorkerResources(_message.Message):
    __slots__ = ("cpu", "memory_mb", "gpu", "labels", "capacity", "hostname", "address", "version", "allowed_modules", "metrics_port")
    CPU_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    GPU_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_MODULES_FIELD_NUMBER: _ClassVar[int]
    METRICS_PORT_FIELD_NUMBER: _ClassVar[int]
    cpu: int
    memory_mb: int
    gpu: int
    labels: _containers.RepeatedScalarFieldContainer[str]
    capacity: int
    hostname: str
    address: str
    version: str
    allowed_modules: _containers.RepeatedScalarFieldContainer[str]
    metrics_port: int
    def __init__(self, cpu: _Optional[int] = ..., memory_mb: _Optional[int] = ..., gpu: _Optional[int] = ..., labels: _Optional[_Iterable[str]] = ..., capacity: _Optional[int] = ..., hostname: _Optional[str] = ..., address: _Optional[str] = ..., version: _Optional[str] = ..., allowed_modules: _Optional[_Iterable[str]] = ..., metrics_port: _Optional[int] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("node_id", "resources", "running_task_ids")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    RUNNING_TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    resources: WorkerResources
    running_task_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node_id: _Optional[str] = ..., resources: _Optional[_Union[WorkerResources, _Mapping]] = ..., running_task_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class RegisterReply(_message.Message):
    __slots__ = ("heartbeat_interval", "lease_timeout", "max_task_data_size", "cancel_task_ids", "lease_takes_results")
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    LEASE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    MAX_TASK_DATA_SIZE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    LEASE_TAKES_RESULTS_FIELD_NUMBER: _ClassVar[int]
    heartbeat_interval: float
    lease_timeout: float
    max_task_data_size: int
    cancel_task_ids: _containers.RepeatedScalarFieldContainer[str]
    lease_takes_results: bool
    def __init__(self, heartbeat_interval: _Optional[float] = ..., lease_timeout: _Optional[float] = ..., max_task_data_size: _Optional[int] = ..., cancel_task_ids: _Optional[_Iterable[str]] = ..., lease_takes_results: _Optional[bool] = ...) -> None: ...

class Metrics(_message.Message):
    __slots__ = ("cpu_percent", "memory_percent", "load1", "disk_percent")
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    LOAD1_FIELD_NUMBER: _ClassVar[int]
    DISK_PERCENT_FIELD_NUMBER: _ClassVar[int]
    cpu_percent: float
    memory_percent: float
    load1: float
    disk_percent: float
    def __init__(self, cpu_percent: _Optional[float] = ..., memory_percent: _Optional[float] = ..., load1: _Optional[float] = ..., disk_percent: _Optional[float] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("node_id", "metrics", "running_task_ids")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    metrics: Metrics
    running_task_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node_id: _Optional[str] = ..., metrics: _Optional[_Union[Metrics, _Mapping]] = ..., running_task_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("cancel_task_ids", "ca_fingerprint")
    CANCEL_TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    CA_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    cancel_task_ids: _containers.RepeatedScalarFieldContainer[str]
    ca_fingerprint: str
    def __init__(self, cancel_task_ids: _Optional[_Iterable[str]] = ..., ca_fingerprint: _Optional[str] = ...) -> None: ...

class DeregisterRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("node_id", "status", "last_heartbeat", "resources", "metrics", "running_task_ids")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    status: str
    last_heartbeat: float
    resources: WorkerResources
    metrics: Metrics
    running_task_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node_id: _Optional[str] = ..., status: _Optional[str] = ..., last_heartbeat: _Optional[float] = ..., resources: _Optional[_Union[WorkerResources, _Mapping]] = ..., metrics: _Optional[_Union[Metrics, _Mapping]] = ..., running_task_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class WorkerList(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerInfo]
    def __init__(self, workers: _Optional[_Iterable[_Union[WorkerInfo, _Mapping]]] = ...) -> None: ...

class EnrollRequest(_message.Message):
    __slots__ = ("join_token", "node_id", "hostname", "csr")
    JOIN_TOKEN_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    CSR_FIELD_NUMBER: _ClassVar[int]
    join_token: str
    node_id: str
    hostname: str
    csr: bytes
    def __init__(self, join_token: _Optional[str] = ..., node_id: _Optional[str] = ..., hostname: _Optional[str] = ..., csr: _Optional[bytes] = ...) -> None: ...

class EnrollReply(_message.Message):
    __slots__ = ("node_id", "worker_token", "labels", "certificate", "ca_bundle")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    CA_BUNDLE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    worker_token: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    certificate: bytes
    ca_bundle: bytes
    def __init__(self, node_id: _Optional[str] = ..., worker_token: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., certificate: _Optional[bytes] = ..., ca_bundle: _Optional[bytes] = ...) -> None: ...

class RenewRequest(_message.Message):
    __slots__ = ("node_id", "csr")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CSR_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    csr: bytes
    def __init__(self, node_id: _Optional[str] = ..., csr: _Optional[bytes] = ...) -> None: ...

class RenewReply(_message.Message):
    __slots__ = ("certificate", "ca_bundle")
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    CA_BUNDLE_FIELD_NUMBER: _ClassVar[int]
    certificate: bytes
    ca_bundle: bytes
    def __init__(self, certificate: _Optional[bytes] = ..., ca_bundle: _Optional[bytes] = ...) -> None: ...

class TaskSpec(_message.Message):
    __slots__ = ("name", "kind", "bundle_id", "function", "args_json", "timeout", "retries", "priority", "requirements")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    ARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    REQUIREMENTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: TaskKind
    bundle_id: str
    function: str
    args_json: str
    timeout: float
    retries: int
    priority: int
    requirements: Requirements
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[_Union[TaskKind, str]] = ..., bundle_id: _Optional[str] = ..., function: _Optional[str] = ..., args_json: _Optional[str] = ..., timeout: _Optional[float] = ..., retries: _Optional[int] = ..., priority: _Optional[int] = ..., requirements: _Optional[_Union[Requirements, _Mapping]] = ...) -> None: ...

class BundleChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class BundleRef(_message.Message):
    __slots__ = ("bundle_id", "size")
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    size: int
    def __init__(self, bundle_id: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("tasks", "wait")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskSpec]
    wait: float
    def __init__(self, tasks: _Optional[_Iterable[_Union[TaskSpec, _Mapping]]] = ..., wait: _Optional[float] = ...) -> None: ...

class SubmitReply(_message.Message):
    __slots__ = ("task_ids", "tasks")
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    tasks: _containers.RepeatedCompositeFieldContainer[Task]
    def __init__(self, task_ids: _Optional[_Iterable[str]] = ..., tasks: _Optional[_Iterable[_Union[Task, _Mapping]]] = ...) -> None: ...

class AttemptEvent(_message.Message):
    __slots__ = ("attempt", "event", "worker", "at", "detail")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    attempt: int
    event: str
    worker: str
    at: float
    detail: str
    def __init__(self, attempt: _Optional[int] = ..., event: _Optional[str] = ..., worker: _Optional[str] = ..., at: _Optional[float] = ..., detail: _Optional[str] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("id", "spec", "status", "owner", "worker", "attempt", "progress", "progress_message", "error_message", "created_at", "start_time", "last_update", "finished_at", "result_json", "has_result_archive", "unschedulable_reason", "cancel_requested", "history")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_UPDATE_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    HAS_RESULT_ARCHIVE_FIELD_NUMBER: _ClassVar[int]
    UNSCHEDULABLE_REASON_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    id: str
    spec: TaskSpec
    status: str
    owner: str
    worker: str
    attempt: int
    progress: float
    progress_message: str
    error_message: str
    created_at: float
    start_time: float
    last_update: float
    finished_at: float
    result_json: str
    has_result_archive: bool
    unschedulable_reason: str
    cancel_requested: bool
    history: _containers.RepeatedCompositeFieldContainer[AttemptEvent]
    def __init__(self, id: _Optional[str] = ..., spec: _Optional[_Union[TaskSpec, _Mapping]] = ..., status: _Optional[str] = ..., owner: _Optional[str] = ..., worker: _Optional[str] = ..., attempt: _Optional[int] = ..., progress: _Optional[float] = ..., progress_message: _Optional[str] = ..., error_message: _Optional[str] = ..., created_at: _Optional[float] = ..., start_time: _Optional[float] = ..., last_update: _Optional[float] = ..., finished_at: _Optional[float] = ..., result_json: _Optional[str] = ..., has_result_archive: _Optional[bool] = ..., unschedulable_reason: _Optional[str] = ..., cancel_requested: _Optional[bool] = ..., history: _Optional[_Iterable[_Union[AttemptEvent, _Mapping]]] = ...) -> None: ...

class TaskRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class ListTasksRequest(_message.Message):
    __slots__ = ("status", "limit", "all_users")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    ALL_USERS_FIELD_NUMBER: _ClassVar[int]
    status: str
    limit: int
    all_users: bool
    def __init__(self, status: _Optional[str] = ..., limit: _Optional[int] = ..., all_users: _Optional[bool] = ...) -> None: ...

class TaskList(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[Task]
    def __init__(self, tasks: _Optional[_Iterable[_Union[Task, _Mapping]]] = ...) -> None: ...

class WaitRequest(_message.Message):
    __slots__ = ("task_ids", "timeout", "first_completed")
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    FIRST_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    timeout: float
    first_completed: bool
    def __init__(self, task_ids: _Optional[_Iterable[str]] = ..., timeout: _Optional[float] = ..., first_completed: _Optional[bool] = ...) -> None: ...

class LogRequest(_message.Message):
    __slots__ = ("task_id", "follow", "offset")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    follow: bool
    offset: int
    def __init__(self, task_id: _Optional[str] = ..., follow: _Optional[bool] = ..., offset: _Optional[int] = ...) -> None: ...

class LogChunk(_message.Message):
    __slots__ = ("index", "text")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    index: int
    text: str
    def __init__(self, index: _Optional[int] = ..., text: _Optional[str] = ...) -> None: ...

class DataChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class ClusterStats(_message.Message):
    __slots__ = ("at", "queued", "running", "finished_total", "finished_per_minute")
    class FinishedTotalEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    AT_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    FINISHED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    FINISHED_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    at: float
    queued: int
    running: int
    finished_total: _containers.ScalarMap[str, int]
    finished_per_minute: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, at: _Optional[float] = ..., queued: _Optional[int] = ..., running: _Optional[int] = ..., finished_total: _Optional[_Mapping[str, int]] = ..., finished_per_minute: _Optional[_Iterable[int]] = ...) -> None: ...

class LeaseRequest(_message.Message):
    __slots__ = ("node_id", "max_tasks", "wait", "max_bundles", "results", "waits_when_told")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_TASKS_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    MAX_BUNDLES_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    WAITS_WHEN_TOLD_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    max_tasks: int
    wait: float
    max_bundles: int
    results: _containers.RepeatedCompositeFieldContainer[TaskResult]
    waits_when_told: bool
    def __init__(self, node_id: _Optional[str] = ..., max_tasks: _Optional[int] = ..., wait: _Optional[float] = ..., max_bundles: _Optional[int] = ..., results: _Optional[_Iterable[_Union[TaskResult, _Mapping]]] = ..., waits_when_told: _Optional[bool] = ...) -> None: ...

class LeasedTask(_message.Message):
    __slots__ = ("task_id", "attempt", "spec", "has_checkpoint", "owner")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    HAS_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    attempt: int
    spec: TaskSpec
    has_checkpoint: bool
    owner: str
    def __init__(self, task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., spec: _Optional[_Union[TaskSpec, _Mapping]] = ..., has_checkpoint: _Optional[bool] = ..., owner: _Optional[str] = ...) -> None: ...

class LeaseReply(_message.Message):
    __slots__ = ("tasks", "replies", "poll_again_after")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    POLL_AGAIN_AFTER_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[LeasedTask]
    replies: _containers.RepeatedCompositeFieldContainer[FenceReply]
    poll_again_after: float
    def __init__(self, tasks: _Optional[_Iterable[_Union[LeasedTask, _Mapping]]] = ..., replies: _Optional[_Iterable[_Union[FenceReply, _Mapping]]] = ..., poll_again_after: _Optional[float] = ...) -> None: ...

class AttemptRef(_message.Message):
    __slots__ = ("task_id", "attempt", "node_id")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    attempt: int
    node_id: str
    def __init__(self, task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., node_id: _Optional[str] = ...) -> None: ...

class ProgressRequest(_message.Message):
    __slots__ = ("ref", "fraction", "message")
    REF_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ref: AttemptRef
    fraction: float
    message: str
    def __init__(self, ref: _Optional[_Union[AttemptRef, _Mapping]] = ..., fraction: _Optional[float] = ..., message: _Optional[str] = ...) -> None: ...

class LogAppendRequest(_message.Message):
    __slots__ = ("ref", "text")
    REF_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ref: AttemptRef
    text: str
    def __init__(self, ref: _Optional[_Union[AttemptRef, _Mapping]] = ..., text: _Optional[str] = ...) -> None: ...

class FenceReply(_message.Message):
    __slots__ = ("accepted", "reason")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    def __init__(self, accepted: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class TaskResult(_message.Message):
    __slots__ = ("ref", "outcome", "result_json", "error_message", "has_result_archive")
    REF_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    HAS_RESULT_ARCHIVE_FIELD_NUMBER: _ClassVar[int]
    ref: AttemptRef
    outcome: Outcome
    result_json: str
    error_message: str
    has_result_archive: bool
    def __init__(self, ref: _Optional[_Union[AttemptRef, _Mapping]] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., result_json: _Optional[str] = ..., error_message: _Optional[str] = ..., has_result_archive: _Optional[bool] = ...) -> None: ...

class CompleteRequest(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TaskResult]
    def __init__(self, results: _Optional[_Iterable[_Union[TaskResult, _Mapping]]] = ...) -> None: ...

class CompleteReply(_message.Message):
    __slots__ = ("replies",)
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    replies: _containers.RepeatedCompositeFieldContainer[FenceReply]
    def __init__(self, replies: _Optional[_Iterable[_Union[FenceReply, _Mapping]]] = ...) -> None: ...

class UploadChunk(_message.Message):
    __slots__ = ("ref", "kind", "data")
    REF_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    ref: AttemptRef
    kind: str
    data: bytes
    def __init__(self, ref: _Optional[_Union[AttemptRef, _Mapping]] = ..., kind: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("refs",)
    REFS_FIELD_NUMBER: _ClassVar[int]
    refs: _containers.RepeatedCompositeFieldContainer[AttemptRef]
    def __init__(self, refs: _Optional[_Iterable[_Union[AttemptRef, _Mapping]]] = ...) -> None: ...
