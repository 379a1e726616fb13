from zope.interface import implementer

from tcpsocket import ServerConfig, Token, TokenStore
from tcpsocket.interfaces import IOpenPolicy


@implementer(IOpenPolicy)
class MailOnly:
    def check(self, identity: str, host: str, port: int) -> str | None:
        return None if port in (143, 993, 587) else "only mail ports"


config = ServerConfig(tokens=TokenStore([Token("change-this-secret-token")]), policy=MailOnly())
