"""UserService: login, tokens, user administration and credits."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from urllib.parse import unquote

import grpc
import redis

from hivemind import auth, keys, tuning
from hivemind.auth import AuthError, issue_worker_token
from hivemind.nodepool.core import NodePoolState
from hivemind.nodepool.views import user_message
from hivemind.proto import hivemind_pb2 as pb
from hivemind.proto import hivemind_pb2_grpc as pb_grpc
from hivemind.userdb import USERNAME_MAX, UserError, UserRecord

#: Longest source address the node pool keeps (a forwarded one is the master's word).
ADDRESS_MAX = 100

# An attempt is counted before the password is checked, so that parallel guesses from one
# address cannot all slip in before the first failure is recorded; a success takes it back.
# KEYS: the address's hash, the username's counter. ARGV: now, username, failures free per
# username, failures free per address, first wait, longest wait, window.
_ATTEMPT = """
local now = tonumber(ARGV[1])
local nf, lf = 'n:' .. ARGV[2], 'last:' .. ARGV[2]
local v = redis.call('HMGET', KEYS[1], 'n', 'last', nf, lf)
local an, al = tonumber(v[1]) or 0, tonumber(v[2]) or 0
local un, ul = tonumber(v[3]) or 0, tonumber(v[4]) or 0
local first, cap = tonumber(ARGV[5]), tonumber(ARGV[6])
local function wait(n, free, last)
  if n < free then return 0 end
  local d = first * 2 ^ (n - free)
  if d > cap then d = cap end
  return last + d - now
end
local wu = wait(un, tonumber(ARGV[3]), ul)
local wa = wait(an, tonumber(ARGV[4]), al)
if wa > 0 and wa >= wu then return {'address', tostring(wa)} end
if wu > 0 then return {'user', tostring(wu)} end
redis.call('HSET', KEYS[1], 'n', an + 1, 'last', ARGV[1], nf, un + 1, lf, ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[7])
return {'ok', v[2] or '', redis.call('GET', KEYS[2]) or '0'}
"""

# The password was right: forget the username's failures from this address and its counter
# across addresses, and take this attempt back from the address's count (not its earlier
# failures: logging in to an account of one's own must not reset a spraying address).
# KEYS as above. ARGV: username, the attempt's time, the address's ``last`` before it.
_SUCCEEDED = """
redis.call('HDEL', KEYS[1], 'n:' .. ARGV[1], 'last:' .. ARGV[1])
redis.call('DEL', KEYS[2])
local n = redis.call('HINCRBY', KEYS[1], 'n', -1)
if n <= 0 then
  redis.call('HDEL', KEYS[1], 'n', 'last')
elseif redis.call('HGET', KEYS[1], 'last') == ARGV[2] then
  if ARGV[3] == '' then redis.call('HDEL', KEYS[1], 'last')
  else redis.call('HSET', KEYS[1], 'last', ARGV[3]) end
end
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('DEL', KEYS[1]) end
return n
"""


def peer_address(peer: str) -> str:
    """The host part of a gRPC peer string: ``ipv4:1.2.3.4:5`` -> ``1.2.3.4``,
    ``ipv6:[::1]:5`` (or ``ipv6:%5B::1%5D:5``) -> ``::1``, ``unix:/path`` -> ``unix``."""
    scheme, _, rest = unquote(peer or "").partition(":")
    if scheme == "ipv4":
        return rest.rpartition(":")[0] or rest
    if scheme == "ipv6":
        host = rest.rpartition(":")[0] if "]" in rest else rest
        return host.strip("[]") or rest
    return scheme or "unknown"


@dataclass(frozen=True)
class Attempt:
    """One counted login attempt, to be settled with :meth:`LoginThrottle.failed` or
    :meth:`LoginThrottle.succeeded`."""

    address_key: str
    username_key: str
    username: str
    at: str
    address_last_before: str


class LoginThrottle:
    """Failed logins per source address and per (username, address), in Redis, with waits
    that double per failure; and a short bounded delay per username across addresses.

    A wrong password from one address never makes the user wait at another, so a stranger
    cannot lock anyone out; an address that sprays many usernames waits for all of them.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._attempt = client.register_script(_ATTEMPT)
        self._succeeded = client.register_script(_SUCCEEDED)

    def attempt(self, address: str, username: str, context: grpc.ServicerContext) -> Attempt:
        """Count an attempt, or abort with RESOURCE_EXHAUSTED while the address must wait."""
        name = username[: USERNAME_MAX + 1]  # a longer one exists nowhere: one counter for all
        address_key = keys.login_address_failures_key(address)
        username_key = keys.login_failures_key(name)
        at = f"{time.time():.6f}"
        outcome, *rest = self._attempt(
            keys=[address_key, username_key],
            args=[
                at,
                name,
                tuning.LOGIN_USER_FAILURES_FREE,
                tuning.LOGIN_ADDRESS_FAILURES_FREE,
                tuning.LOGIN_BACKOFF_FIRST,
                tuning.LOGIN_BACKOFF_MAX,
                tuning.LOGIN_FAILURE_WINDOW,
            ],
        )
        if outcome != "ok":
            wait = max(1, math.ceil(float(rest[0])))
            whose = "" if outcome == "address" else f" for {name!r}"
            context.set_trailing_metadata((("retry-after", str(wait)),))
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many failed logins{whose} from this address; retry in {wait} s",
            )
        last_before, across = rest
        slow = int(across or 0) - tuning.LOGIN_SLOWDOWN_AFTER
        if slow > 0:
            time.sleep(min(tuning.LOGIN_SLOWDOWN_MAX, slow * tuning.LOGIN_SLOWDOWN_STEP))
        return Attempt(address_key, username_key, name, at, last_before)

    def failed(self, attempt: Attempt) -> None:
        pipe = self.redis.pipeline()
        pipe.incr(attempt.username_key)
        pipe.expire(attempt.username_key, tuning.LOGIN_FAILURE_WINDOW)
        pipe.execute()

    def succeeded(self, attempt: Attempt) -> None:
        self._succeeded(
            keys=[attempt.address_key, attempt.username_key],
            args=[attempt.username, attempt.at, attempt.address_last_before],
        )


class UserService(pb_grpc.UserServiceServicer):
    def __init__(self, state: NodePoolState) -> None:
        self.state = state
        self.throttle = LoginThrottle(state.redis)

    def source_address(self, context: grpc.ServicerContext) -> str:
        """Where the login comes from: the address the master forwards for its client (only
        next to the master's service token), else the gRPC peer's."""
        forwarded = forwarder = ""
        for key, value in context.invocation_metadata():
            if key == auth.FORWARDED_FOR_METADATA and isinstance(value, str):
                forwarded = value
            elif key == auth.FORWARDER_METADATA and isinstance(value, str):
                forwarder = value
        if forwarded and forwarder:
            try:
                if self.state.signer.verify(forwarder).kind == "service":
                    return forwarded.strip()[:ADDRESS_MAX] or "unknown"
            except AuthError:
                pass
        return peer_address(context.peer())[:ADDRESS_MAX]

    def Login(self, request: pb.LoginRequest, context: grpc.ServicerContext) -> pb.TokenReply:
        attempt = self.throttle.attempt(self.source_address(context), request.username, context)
        user = self.state.users.authenticate(request.username, request.password)
        if user is None:
            self.throttle.failed(attempt)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "wrong username or password")
        self.throttle.succeeded(attempt)
        return self._token_reply(user)

    def Refresh(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.TokenReply:
        identity = self.state.require_user(context)
        return self._token_reply(self.state.users.get(identity.subject))

    def WhoAmI(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.User:
        identity = self.state.identify(context)
        if identity.kind != "user":
            # A worker (its node id) or the master's service token ("master", "service").
            return pb.User(username=identity.subject, role=identity.role)
        try:
            return user_message(self.state.users.get(identity.subject))
        except UserError:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "user no longer exists")

    def CreateUser(self, request: pb.CreateUserRequest, context: grpc.ServicerContext) -> pb.User:
        self.state.require_user(context, admin=True)
        return self._users_call(
            context,
            lambda: self.state.users.create_user(
                request.username, request.password, request.role or "user", request.credits
            ),
        )

    def DisableUser(self, request: pb.UsernameRequest, context: grpc.ServicerContext) -> pb.User:
        identity = self.state.require_user(context, admin=True)
        if identity.subject == request.username:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "you cannot disable yourself")
        return self._users_call(context, lambda: self.state.users.set_disabled(request.username))

    def SetPassword(self, request: pb.SetPasswordRequest, context: grpc.ServicerContext) -> pb.User:
        """An admin resets anyone else's password; one's own needs the current password."""
        identity = self.state.require_user(context)
        if request.username == identity.subject:
            user = self._change_own_password(
                identity.subject, request.old_password, request.password, context
            )
            return user_message(user)
        if not identity.is_admin:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "only an admin sets others' passwords")
        reply = self._users_call(
            context, lambda: self.state.users.set_password(request.username, request.password)
        )
        self._tokens_revoked("user", request.username)
        return reply

    def ChangePassword(
        self, request: pb.ChangePasswordRequest, context: grpc.ServicerContext
    ) -> pb.TokenReply:
        identity = self.state.require_user(context)
        user = self._change_own_password(
            identity.subject, request.old_password, request.new_password, context
        )
        return self._token_reply(user)

    def ListUsers(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.UserList:
        self.state.require_user(context, admin=True)
        return pb.UserList(users=[user_message(u) for u in self.state.users.list_users()])

    def GetBalance(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.Balance:
        identity = self.state.require_user(context)
        user = self.state.users.get(identity.subject)
        return pb.Balance(username=user.username, credits=user.credits)

    def TransferCredits(
        self, request: pb.TransferRequest, context: grpc.ServicerContext
    ) -> pb.Balance:
        identity = self.state.require_user(context)
        user = self._users_call(
            context,
            lambda: self.state.users.transfer(
                identity.subject, request.to_username, request.amount
            ),
        )
        return pb.Balance(username=user.username, credits=user.credits)

    def IssueWorkerToken(
        self, request: pb.WorkerTokenRequest, context: grpc.ServicerContext
    ) -> pb.TokenReply:
        self.state.require_user(context, admin=True)
        self._check_node_id(request.node_id, context)
        if request.ttl < 0 or not math.isfinite(request.ttl):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ttl must be a positive number")
        settings = self.state.settings
        ttl = request.ttl or settings.worker_token_ttl
        generation = self.state.users.worker_token_generation(request.node_id)
        try:
            token = issue_worker_token(settings, request.node_id, ttl, generation)
        except AuthError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return pb.TokenReply(token=token, expires_at=float(int(time.time() + ttl)))

    def RevokeWorkerTokens(
        self, request: pb.WorkerTokenRequest, context: grpc.ServicerContext
    ) -> pb.Empty:
        self.state.require_user(context, admin=True)
        self._check_node_id(request.node_id, context)
        self.state.users.revoke_worker_tokens(request.node_id)
        self._tokens_revoked("worker", request.node_id)
        return pb.Empty()

    def GrantCredits(self, request: pb.GrantRequest, context: grpc.ServicerContext) -> pb.User:
        self.state.require_user(context, admin=True)
        return self._users_call(
            context, lambda: self.state.users.add_credits(request.username, request.amount)
        )

    # -- helpers -----------------------------------------------------------------------------
    def _token_reply(self, user: UserRecord) -> pb.TokenReply:
        token, expires_at = self.state.signer.issue(
            user.username, "user", user.role, self.state.settings.token_ttl, user.token_generation
        )
        return pb.TokenReply(token=token, expires_at=expires_at, user=user_message(user))

    def _change_own_password(
        self, username: str, old_password: str, new_password: str, context: grpc.ServicerContext
    ) -> UserRecord:
        """Check the current password (throttled like a login), then set the new one."""
        if not old_password:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "changing your own password needs your current password",
            )
        attempt = self.throttle.attempt(self.source_address(context), username, context)
        if self.state.users.authenticate(username, old_password) is None:
            self.throttle.failed(attempt)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "your current password is wrong")
        self.throttle.succeeded(attempt)
        self._users_call(context, lambda: self.state.users.set_password(username, new_password))
        self._tokens_revoked("user", username)
        return self.state.users.get(username)

    def _tokens_revoked(self, kind: str, subject: str) -> None:
        """This node pool refuses ``subject``'s older tokens from its next call on."""
        generations = self.state.signer.generations
        if generations is not None:
            generations.forget(kind, subject)
        # The node pool's cache of verified tokens (core.py) holds them until it re-verifies.
        verified = self.state._verified
        for token, identity in list(verified.items()):
            if identity.kind == kind and identity.subject == subject:
                verified.pop(token, None)

    @staticmethod
    def _check_node_id(node_id: str, context: grpc.ServicerContext) -> None:
        if not node_id or len(node_id) > 128:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "node_id needs 1 to 128 characters")

    def _users_call(self, context, call):  # type: ignore[no-untyped-def]
        try:
            result = call()
        except UserError as exc:
            text = str(exc)
            code = (
                grpc.StatusCode.NOT_FOUND
                if text.startswith("no user")
                else grpc.StatusCode.ALREADY_EXISTS
                if "already exists" in text
                else grpc.StatusCode.INVALID_ARGUMENT
            )
            context.abort(code, text)
        if not hasattr(result, "username"):
            return result
        self.state.forget_user(result.username)  # its next call sees the change
        return user_message(result)
