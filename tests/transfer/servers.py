"""Real servers on 127.0.0.1 for the transfer tests and the benchmark.

vsftpd (plain, explicit and implicit FTPS with its default require_ssl_reuse),
pyftpdlib (quirky servers), OpenSSH sshd (SFTP) and dante (SOCKS). Each starter
is a context manager that waits until the port answers and kills the process
group at exit. A missing binary raises `Missing` (the fixtures turn it into a skip).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

HOST = "127.0.0.1"
HERE = Path(__file__).resolve().parent


class Missing(Exception):
    """An external program the test needs is not installed."""


def need(program: str, *extra_dirs: str) -> str:
    found = shutil.which(program, path=os.pathsep.join([*extra_dirs, "/usr/sbin", "/usr/bin", os.environ.get("PATH", "")]))
    if not found:
        raise Missing(f"{program} is not installed")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            detail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}: {detail}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"{proc.args!r} did not listen on {port}")


@contextlib.contextmanager
def running(args: list[str], port: int, log: Path, **kw: object) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kw)  # type: ignore[call-overload]
    try:
        wait_port(port, proc, log=log)
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(5)


# --- certificates ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Certs:
    ca_file: Path
    cert_file: Path
    key_file: Path
    other_ca_file: Path  # a CA that did not sign the server certificate


def make_certs(folder: Path) -> Certs:
    """A CA and a server certificate for localhost/127.0.0.1 (cryptography)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        return key, cert

    ca_key, ca_cert = ca("schedulerd test CA")
    _, other_cert = ca("some other CA")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    certs = Certs(folder / "ca.pem", folder / "server.pem", folder / "server.key", folder / "other-ca.pem")
    certs.ca_file.write_bytes(ca_cert.public_bytes(pem))
    certs.other_ca_file.write_bytes(other_cert.public_bytes(pem))
    certs.cert_file.write_bytes(cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    certs.key_file.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL,
                                                 serialization.NoEncryption()))
    certs.key_file.chmod(0o600)
    return certs


# --- FTP servers -----------------------------------------------------------------


@dataclasses.dataclass
class FtpServer:
    host: str
    port: int
    root: Path  # the server's root
    pub: Path  # a folder the test user may write (remote path `remote`)
    remote: str  # remote path of `pub`
    user: str
    password: str
    log: Path
    proc: subprocess.Popen[bytes]
    owner: int = -1  # uid that must own files the server writes/deletes

    def put(self, rel: str, data: bytes = b"x", mtime: float | None = None) -> Path:
        """Create a file under `pub` as the server would see it."""
        p = self.pub / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        if mtime is not None:
            os.utime(p, (mtime, mtime))
        if self.owner >= 0:
            d = p
            while d != self.pub:
                os.chown(d, self.owner, -1)
                d = d.parent
        return p

    def kill(self) -> None:
        stop(self.proc)


VSFTPD_CONF = """\
listen=YES
listen_address={host}
listen_port={port}
background=NO
anonymous_enable=YES
local_enable=NO
write_enable=YES
anon_root={root}
anon_upload_enable=YES
anon_mkdir_write_enable=YES
anon_other_write_enable=YES
anon_umask=022
no_anon_password=YES
seccomp_sandbox=NO
xferlog_enable=YES
vsftpd_log_file={log}
dual_log_enable=YES
log_ftp_protocol={protocol_log}
{tls}"""


@contextlib.contextmanager
def vsftpd(folder: Path, tls: str = "none", certs: Certs | None = None, protocol_log: bool = True) -> Iterator[FtpServer]:
    """vsftpd with anonymous write access; TLS options at vsftpd's defaults (require_ssl_reuse=YES).

    `protocol_log`: every command and reply in `log` (tests read it; vsftpd's default is off,
    and it costs the server two log writes per command).
    """
    binary = need("vsftpd")
    try:
        ftp_uid = pwd.getpwnam("ftp").pw_uid
    except KeyError:
        raise Missing("vsftpd needs the system user 'ftp'") from None
    if os.geteuid() != 0:
        raise Missing("vsftpd tests need root")
    folder.mkdir(parents=True, exist_ok=True)
    root = folder / "root"
    pub = root / "pub"
    pub.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    os.chown(pub, ftp_uid, -1)
    port = free_port()
    tls_conf = ""
    if tls != "none":
        assert certs is not None
        tls_conf = (f"ssl_enable=YES\nallow_anon_ssl=YES\nrsa_cert_file={certs.cert_file}\n"
                    f"rsa_private_key_file={certs.key_file}\n")
        if tls == "implicit":
            tls_conf += "implicit_ssl=YES\n"
    log = folder / "vsftpd.log"
    conf = folder / "vsftpd.conf"
    conf.write_text(VSFTPD_CONF.format(host=HOST, port=port, root=root, log=log, tls=tls_conf,
                                       protocol_log="YES" if protocol_log else "NO"))
    with running([binary, str(conf)], port, folder / "vsftpd.out") as proc:
        yield FtpServer(HOST, port, root, pub, "/pub", "anonymous", "guest-password", log, proc, ftp_uid)


@contextlib.contextmanager
def pyftpd(folder: Path, *args: str, user: str = "agency", password: str = "s3cr3t-Pa55", port: int = 0,
           subclass: str | None = None, env: dict[str, str] | None = None) -> Iterator[FtpServer]:
    """pyftpdlib in a subprocess (see pyftpd_server.py for the quirk options).

    `subclass`: Python code run with -c instead of pyftpd_server.py; it finds that module's
    folder in argv[1] and subclasses its handler (quirks one test file needs). `env` is
    added to the server's environment.
    """
    folder.mkdir(parents=True, exist_ok=True)
    root = folder / "root"
    root.mkdir(exist_ok=True)
    port = port or free_port()
    pwfile = folder / "password"
    pwfile.write_text(password)
    log = folder / "pyftpd.log"
    program = ["-c", subclass, str(HERE)] if subclass else [str(HERE / "pyftpd_server.py")]
    argv = [sys.executable, *program, "--root", str(root), "--port", str(port),
            "--user", user, "--password-file", str(pwfile), "--log", str(log), *args]
    with running(argv, port, folder / "pyftpd.out", env={**os.environ, **(env or {})}) as proc:
        yield FtpServer(HOST, port, root, root, "/", user, password, log, proc)


# --- SSH -------------------------------------------------------------------------


@dataclasses.dataclass
class SshServer:
    host: str
    port: int
    user: str
    key_file: Path  # the client's private key
    known_hosts: Path  # holds the server's host key
    other_known_hosts: Path  # holds a different key for the same host
    root: Path  # a folder to read/write (absolute remote paths)
    log: Path
    proc: subprocess.Popen[bytes]


@contextlib.contextmanager
def sshd(folder: Path) -> Iterator[SshServer]:
    """OpenSSH sshd on a high port, throwaway host key, one authorized client key, internal-sftp."""
    binary = need("sshd")
    keygen = need("ssh-keygen")
    if os.geteuid() != 0:
        raise Missing("sshd tests need root")
    try:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation folder
    except OSError as e:
        raise Missing(f"sshd needs /run/sshd: {e}") from None
    folder.mkdir(parents=True, exist_ok=True)
    hostkey, client, other = folder / "host_ed25519", folder / "client_ed25519", folder / "other_ed25519"
    for k in (hostkey, client, other):
        if not k.exists():
            subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(k)], check=True)
    port = free_port()
    user = pwd.getpwuid(os.geteuid()).pw_name
    (folder / "authorized_keys").write_text((folder / "client_ed25519.pub").read_text())
    known = folder / "known_hosts"
    known.write_text(f"[{HOST}]:{port} " + " ".join((folder / "host_ed25519.pub").read_text().split()[:2]) + "\n")
    other_known = folder / "other_known_hosts"
    other_known.write_text(f"[{HOST}]:{port} " + " ".join((folder / "other_ed25519.pub").read_text().split()[:2]) + "\n")
    root = folder / "files"
    root.mkdir(exist_ok=True)
    conf = folder / "sshd_config"
    conf.write_text(
        f"Port {port}\nListenAddress {HOST}\nHostKey {hostkey}\nPidFile {folder}/sshd.pid\n"
        f"AuthorizedKeysFile {folder}/authorized_keys\nStrictModes no\nUsePAM no\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "Subsystem sftp internal-sftp\nMaxStartups 100\nMaxSessions 100\nLogLevel VERBOSE\n")
    log = folder / "sshd.log"
    with running([binary, "-D", "-e", "-f", str(conf)], port, log) as proc:
        yield SshServer(HOST, port, user, client, known, other_known, root, log, proc)


# --- SOCKS -----------------------------------------------------------------------


@dataclasses.dataclass
class SocksProxy:
    host: str
    port: int
    log: Path

    def url(self, scheme: str = "socks5") -> str:
        return f"{scheme}://{self.host}:{self.port}"


@contextlib.contextmanager
def danted(folder: Path) -> Iterator[SocksProxy]:
    """dante SOCKS4/5 server on loopback, no authentication, logging every connect."""
    binary = need("danted")
    if os.geteuid() != 0:
        raise Missing("danted tests need root")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = folder / "danted.log"
    conf = folder / "danted.conf"
    conf.write_text(
        f"logoutput: {log}\ninternal: {HOST} port = {port}\nexternal: {HOST}\n"
        "clientmethod: none\nsocksmethod: none\nuser.privileged: root\nuser.unprivileged: nobody\n"
        "client pass {\n  from: 127.0.0.0/8 to: 0.0.0.0/0\n  log: error\n}\n"
        "socks pass {\n  from: 127.0.0.0/8 to: 0.0.0.0/0\n  command: connect\n  log: connect error\n}\n")
    with running([binary, "-f", str(conf), "-p", str(folder / "danted.pid"), "-N", "1"], port, folder / "danted.out"):
        yield SocksProxy(HOST, port, log)


def settings_for(server: FtpServer | SshServer, **overrides: object):  # type: ignore[no-untyped-def]
    """ConnectionSettings for one of these servers (short timeouts, no retries)."""
    from schedulerd.settings import build
    from tasks.transfer.settings import ConnectionSettings

    data: dict[str, object] = {"host": server.host, "port": server.port, "user": server.user, "timeout": 5, "retries": 0}
    if isinstance(server, SshServer):
        data.update(protocol="sftp", key_file=str(server.key_file), known_hosts=str(server.known_hosts))
    else:
        data["password"] = server.password
    data.update(overrides)
    return build(ConnectionSettings, data, "test")


async def fetch(client, entry, target: Path, *, log, on_bytes=None) -> Path | None:  # type: ignore[no-untyped-def]
    """One remote file to `target` the way `ftp_pull` moves a batch: `download` (temp name, size
    check), then `commit` (durable, then named); None when skipped."""
    from tasks.transfer.fetch import commit, download

    d = await download(client, entry, target, log=log, on_bytes=on_bytes)
    if d is None:
        return None
    await commit([d])
    if d.error is not None:
        raise d.error
    return d.result


def task_table(server: FtpServer | SshServer, local: Path, ftp_subdir: str = "", **over: object) -> dict[str, object]:
    """A task's connection settings for one of these servers (SFTP uses its key and known_hosts)."""
    data: dict[str, object] = {"host": server.host, "port": server.port, "user": server.user, "timeout": 5,
                               "retries": 0, "local_dir": str(local), "stable": 0}
    if isinstance(server, SshServer):
        data.update(protocol="sftp", key_file=str(server.key_file), known_hosts=str(server.known_hosts),
                    remote_dir=str(server.root))
    else:
        data.update(password=server.password, remote_dir=server.remote + ftp_subdir)
    data.update(over)
    return data
