"""A real OpenLDAP ``slapd`` for tests: a generated slapd.conf (mdb database, the ppolicy overlay, TLS with a
test CA), a test directory loaded with ``slapadd`` before it starts, on free loopback ports (ldap:// with
StartTLS, and ldaps://)."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["ROOT_DN", "ROOT_PASSWORD", "SERVICE_DN", "SERVICE_PASSWORD", "SUFFIX", "Slapd", "free_port", "start_slapd"]

SUFFIX = "dc=example,dc=org"
SERVICE_DN = f"cn=reader,{SUFFIX}"
SERVICE_PASSWORD = "reader secret 7"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PASSWORD = "root secret 8"
"""The directory's own administrator (the tests change group membership with it)."""
MODULES = Path("/usr/lib/ldap")
SCHEMAS = Path("/etc/ldap/schema")

CONFIG = """\
include {schemas}/core.schema
include {schemas}/cosine.schema
include {schemas}/inetorgperson.schema
modulepath {modules}
moduleload back_mdb
moduleload ppolicy
pidfile {home}/slapd.pid
TLSCACertificateFile {home}/ca.pem
TLSCertificateFile {home}/server.pem
TLSCertificateKeyFile {home}/server.key

database mdb
suffix "{suffix}"
rootdn "cn=admin,{suffix}"
rootpw "{root_password}"
directory {home}/data
maxsize 10485760
overlay ppolicy
access to attrs=userPassword by self read by anonymous auth by * none
access to * by users read by * none
"""


def _person(uid: str, name: str, mail: str, password: str, extra: str = "") -> str:
    return (
        f"dn: uid={uid},ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {name}\nsn: {name.split()[-1]}\n"
        f"mail: {mail}\nuserPassword: {password}\n{extra}\n"
    )


def directory_ldif() -> str:
    """alice: in cn=admins and cn=staff; bob: in cn=staff; dave and frank: in no group; carol: locked by the
    password policy; erin: matches the "disabled" filter (employeeType: disabled)."""
    return (
        f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n"
        f"dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n\n"
        f"dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups\n\n"
        f"dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: reader\n"
        f"userPassword: {SERVICE_PASSWORD}\n\n"
        + _person("alice", "Alice Liddell", "alice@example.org", "alice pass 1")
        + _person("bob", "Bob Builder", "bob@example.org", "bob pass 2")
        + _person("dave", "Dave Local", "dave@example.org", "dave pass 4")
        + _person("frank", "Frank Late", "frank@example.org", "frank pass 6")
        + _person("carol", "Carol Locked", "carol@example.org", "carol pass 3", "pwdAccountLockedTime: 000001010000Z\n")
        + _person("erin", "Erin Gone", "erin@example.org", "erin pass 5", "employeeType: disabled\n")
        + f"dn: cn=admins,ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: admins\nmember: uid=alice,ou=people,{SUFFIX}\n\n"
        + f"dn: cn=staff,ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: staff\n"
        f"member: uid=bob,ou=people,{SUFFIX}\nmember: uid=alice,ou=people,{SUFFIX}\n\n"
    )


def write_certificates(home: Path) -> str:
    """A test CA and a server certificate it signed for 127.0.0.1 (slapd's TLS files); the CA's PEM."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "parley test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca.public_bytes(serialization.Encoding.PEM).decode()
    (home / "ca.pem").write_text(ca_pem)
    (home / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (home / "server.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ca_pem


@dataclass
class Slapd:
    url: str
    """ldap:// (StartTLS offered)."""
    ldaps_url: str
    ca_pem: str
    """The CA that signed the server's certificate."""
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_slapd(home: Path) -> Slapd:
    slapd = shutil.which("slapd") or "/usr/sbin/slapd"
    slapadd = shutil.which("slapadd") or "/usr/sbin/slapadd"
    (home / "data").mkdir(parents=True)
    conf = home / "slapd.conf"
    conf.write_text(CONFIG.format(schemas=SCHEMAS, modules=MODULES, home=home, suffix=SUFFIX, root_password=ROOT_PASSWORD))
    ca_pem = write_certificates(home)
    (home / "directory.ldif").write_text(directory_ldif())
    loaded = subprocess.run([slapadd, "-f", str(conf), "-l", str(home / "directory.ldif")], capture_output=True)
    if loaded.returncode != 0:
        raise RuntimeError(f"slapadd failed: {loaded.stderr.decode()[-2000:]}")
    port, tls_port = free_port(), free_port()
    url, ldaps_url = f"ldap://127.0.0.1:{port}", f"ldaps://127.0.0.1:{tls_port}"
    # -d keeps slapd in the foreground (its own process, ended by the fixture); "0" logs nothing.
    process = subprocess.Popen(
        [slapd, "-f", str(conf), "-h", f"{url}/ {ldaps_url}/", "-d", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 15
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"slapd exited: {process.stderr.read().decode()[-2000:] if process.stderr else ''}")
        try:
            for p in (port, tls_port):
                socket.create_connection(("127.0.0.1", p), timeout=0.2).close()
            return Slapd(url=url, ldaps_url=ldaps_url, ca_pem=ca_pem, process=process)
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("slapd did not listen within 15 s") from None
            time.sleep(0.05)
