"""UserService: login, tokens, user administration and credits."""

from __future__ import annotations

import grpc

from hivemind import keys
from hivemind.auth import issue_worker_token
from hivemind.nodepool.core import NodePoolState
from hivemind.nodepool.views import user_message
from hivemind.proto import hivemind_pb2 as pb
from hivemind.proto import hivemind_pb2_grpc as pb_grpc
from hivemind.userdb import UserError


class UserService(pb_grpc.UserServiceServicer):
    def __init__(self, state: NodePoolState) -> None:
        self.state = state

    def Login(self, request: pb.LoginRequest, context: grpc.ServicerContext) -> pb.TokenReply:
        failures_key = keys.login_failures_key(request.username)
        failures = int(self.state.redis.get(failures_key) or 0)
        if failures >= keys.LOGIN_FAILURES_MAX:
            wait = self.state.redis.ttl(failures_key)
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many failed logins for {request.username!r}; try again in {wait} s",
            )
        user = self.state.users.authenticate(request.username, request.password)
        if user is None:
            # The window starts at the first failure (EXPIRE NX needs Redis 7).
            if self.state.redis.incr(failures_key) == 1:
                self.state.redis.expire(failures_key, keys.LOGIN_FAILURE_WINDOW)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "wrong username or password")
        self.state.redis.delete(failures_key)
        token, expires_at = self.state.signer.issue(
            user.username, "user", user.role, self.state.settings.token_ttl
        )
        return pb.TokenReply(token=token, expires_at=expires_at, user=user_message(user))

    def Refresh(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.TokenReply:
        identity = self.state.require_user(context)
        user = self.state.users.get(identity.subject)
        token, expires_at = self.state.signer.issue(
            user.username, "user", user.role, self.state.settings.token_ttl
        )
        return pb.TokenReply(token=token, expires_at=expires_at, user=user_message(user))

    def WhoAmI(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.User:
        identity = self.state.identify(context)
        if identity.is_worker:
            return pb.User(username=identity.subject, role="worker")
        return user_message(self.state.users.get(identity.subject))

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
        identity = self.state.require_user(context)
        if request.username != identity.subject and not identity.is_admin:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "only an admin sets others' passwords")
        return self._users_call(
            context, lambda: self.state.users.set_password(request.username, request.password)
        )

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
        if not request.node_id or len(request.node_id) > 128:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "node_id needs 1 to 128 characters")
        token = issue_worker_token(self.state.settings, request.node_id)
        return pb.TokenReply(token=token)

    def GrantCredits(self, request: pb.GrantRequest, context: grpc.ServicerContext) -> pb.User:
        self.state.require_user(context, admin=True)
        return self._users_call(
            context, lambda: self.state.users.add_credits(request.username, request.amount)
        )

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
