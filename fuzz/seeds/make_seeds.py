#!/usr/bin/env python3
"""Writes the seed inputs of the kmsfs fuzz targets into fuzz/seeds/<target>/.

Binary seeds come from the known-answer vectors (tests/vectors) and the example volume
(tests/data/example-v1), whose keys the targets use (fuzz/src/lib.rs); the JSON and text seeds
are written out here. Run from anywhere: `python3 fuzz/seeds/make_seeds.py`. Deterministic.
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
VEC = os.path.join(ROOT, "tests", "vectors")
EX = os.path.join(ROOT, "tests", "data", "example-v1")


def vector(name):
    out = {}
    with open(os.path.join(VEC, name)) as f:
        for line in f:
            if ": " in line:
                k, v = line.rstrip("\n").split(": ", 1)
                out[k] = v
    return out


def raw(path):
    with open(path, "rb") as f:
        return f.read()


def put(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# file_header ---------------------------------------------------------------------------------
put("file_header", "vector", bytes.fromhex(vector("file-header.txt")["header"]))
put("file_header", "vector-unknown-flags", bytes.fromhex(vector("file-header-unknown-flags.txt")["header"]))
put("file_header", "example-it-works", raw(os.path.join(EX, "eTHQ1dpuQhocWttwytvD_-ktymsfcwNaKGMYHg"))[:104])

# content_block: flags ‖ block number ‖ final delta ‖ flip index ‖ payload ---------------------
for case in ["content-block-full", "content-block-final-short", "content-block-high-number",
             "content-block-empty-final"]:
    v = vector(case + ".txt")
    exp = {512: 0, 1024: 1, 2048: 2, 4096: 3}[int(v["block-size"])]
    flags = exp | (0x10 if v["final"] == "true" else 0)
    delta = 0 if v["final"] == "true" else 1  # a non-final block: the final one comes after it
    put("content_block", case, bytes([flags]) + struct.pack(">Q", int(v["block"])) + bytes([delta, 0, 7])
        + bytes.fromhex(v["ciphertext"]))
cf = bytes.fromhex(vector("cipher-file-3-blocks.txt")["cipher-file"])
put("content_block", "cipher-file-3-blocks", bytes([0x10]) + struct.pack(">Q", 0) + b"\x00\x01\x00" + cf[104:])

# entry_name: flags ‖ dir id ‖ payload --------------------------------------------------------
for case in ["name-short", "name-at-root", "name-unicode", "name-long"]:
    v = vector(case + ".txt")
    flags = 1 if v.get("at-root") == "true" else 0
    stored = v.get("side-file", v["entry"])
    put("entry_name", case + "-stored", bytes([flags]) + bytes.fromhex(v["dir-id"]) + stored.encode())
    put("entry_name", case + "-plain", bytes([flags]) + bytes.fromhex(v["dir-id"]) + bytes.fromhex(v["name"]))
put("entry_name", "control-dir-at-root", b"\x01" + b"\xf0" * 16 + b".kmsfs")
put("entry_name", "plaintext-mode-internal", b"\x02" + b"\x00" * 16 + b"kmsfs.long.abc")
put("entry_name", "example-root-entry", b"\x01" + raw(os.path.join(EX, "kmsfs.dirid")) + b"eTHQ1dpuQhocWttwytvD_-ktymsfcwNaKGMYHg")

# symlink_xattr -------------------------------------------------------------------------------
put("symlink_xattr", "symlink-stored", vector("symlink-target.txt")["stored"])
put("symlink_xattr", "symlink-target", bytes.fromhex(vector("symlink-target.txt")["target"]))
put("symlink_xattr", "xattr-backing-name", vector("xattr.txt")["backing-name"])
put("symlink_xattr", "xattr-stored-value", bytes.fromhex(vector("xattr.txt")["stored-value"]))

# keystore_envelope ---------------------------------------------------------------------------
put("keystore_envelope", "vector-two-slots", raw(os.path.join(VEC, "key-store.keystore")))
put("keystore_envelope", "example-volume", raw(os.path.join(EX, ".kmsfs", "keystore")))

# keystore_body: the body of the key-store vector (same ids, digest, secret, material) -------
ks = vector("key-store.txt")
key_id = ks["default-key"]
body = {
    "format": 1,
    "volume_id": ks["volume-id"],
    "config_digest": ks["config-digest"],
    "volume_secret": ks["volume-secret"],
    "default_key": key_id,
    "keys": [{
        "id": key_id, "description": "default", "created": 1795000000, "state": "Enabled",
        "versions": [{"version": 1, "created": 1795000000, "material": ks["key-material-v1"]}],
    }],
    "aliases": {},
    "rules": [],
}
put("keystore_body", "vector-minimal", json.dumps(body, separators=(",", ":")))
key2 = "0f0e0d0c-0b0a-0908-0706-050403020100"
rich = dict(body)
rich["keys"] = body["keys"] + [{
    "id": key2, "description": "finance", "created": 1795000000, "state": "Enabled",
    "versions": [
        {"version": 1, "created": 1795000000, "material": None, "origin": "created", "destroyed": 1795100000},
        {"version": 2, "created": 1795050000, "material": "11" * 32, "origin": "on-demand-rotation"},
    ],
    "tags": {"team": "finance"}, "deletion_date": None,
    "rotation": {"enabled": True, "period_days": 90}, "last_rotation": 1795050000,
    "min_decryption_version": 2,
    "policy": json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "Users", "Effect": "Allow", "Principal": {"Uid": ["1000", "0"]}, "Action": "kms:*"}]}),
}]
rich["aliases"] = {"alias/finance": key2}
rich["rules"] = [{"prefix": "/finance", "key": key2}]
rich["owner_uid"] = 1000
rich["grants"] = [{
    "id": "g-1", "key": key2, "name": "backup", "grantee": {"any": False, "uids": [34], "users": [], "gids": [], "groups": []},
    "operations": ["kms:Decrypt"], "path_like": "/finance/*", "encryption_context_subset": {},
    "expires": 1900000000, "created": 1795000000, "retiring_principal": None,
}]
rich["alerts"] = {"denials_per_minute": 10, "decrypts_per_minute": None}
put("keystore_body", "vector-rich", json.dumps(rich, separators=(",", ":")))

# volume_config -------------------------------------------------------------------------------
put("volume_config", "example-volume", raw(os.path.join(EX, ".kmsfs", "volume.json")))
put("volume_config", "key-store-vector", raw(os.path.join(VEC, "key-store.volume.json")))
vc = json.loads(raw(os.path.join(EX, ".kmsfs", "volume.json")))
vc["features"] = ["plaintext-names", "long-name-side-files"]
vc["block_size"] = 512
put("volume_config", "plaintext-names", json.dumps(vc, indent=2) + "\n")

# audit_segment (text; see fuzz_targets/audit_segment.rs) -------------------------------------
T = "2026-11-23T15:28:07.123456789Z"
chain_start = {"seq": 0, "time": T, "event": "ChainStart", "source": "system", "detail": "new audit log"}
open_rec = {"seq": 2, "time": T, "event": "Open", "source": "fs",
            "actor": {"uid": 1000, "gid": 1000, "user": "alice", "pid": 4242, "exe": "/usr/bin/cat"},
            "resources": {"path": "/It works.txt", "file_id": "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf",
                          "key_id": key_id, "key_version": 1},
            "access_mode": "read", "flags": 0,
            "decision": {"allowed": True, "by": "OwnerFullControl"}, "errno": 0}
close_rec = {"seq": 3, "time": T, "event": "Close", "source": "fs", "actor": {"uid": 1000, "gid": 1000, "pid": 4242},
             "resources": {"path": "/It works.txt"}, "errno": 0, "bytes_read": 10}
J = lambda o: json.dumps(o, separators=(",", ":"))
put("audit_segment", "clean-session",
    "!S" + J(chain_start) + "\n"
    + "!K" + J({"time": T, "reason": "start"}) + "\n"
    + "!R" + J(open_rec) + "\n"
    + "!R" + J(close_rec) + "\n"
    + "!K" + J({"time": T, "reason": "unmount"}) + "\n"
    + "#HEAD\n=")
put("audit_segment", "two-segments",
    "!S" + J(chain_start) + "\n"
    + "!K" + J({"time": T, "reason": "start"}) + "\n"
    + "!R" + J(open_rec) + "\n"
    + "!K" + J({"time": T, "reason": "segment-end"}) + "\n"
    + "#SEG 2\n"
    + "!R" + J(dict(close_rec, seq=4)) + "\n"
    + "!K" + J({"time": T, "reason": "unmount"}) + "\n"
    + "#HEAD\n=")
put("audit_segment", "crashed-torn-tail",
    "!S" + J(chain_start) + "\n"
    + "!K" + J({"time": T, "reason": "start"}) + "\n"
    + "!R" + J(open_rec) + "\n"
    + "AAAAAAAAAAIBAAAA\n"
    + "!@9;R" + J(dict(close_rec, seq=9)) + "\n"
    + "#HEAD\n=")

put("audit_segment", "after-retention",
    "#SEG 3\n"
    + "!@100;S" + J(dict(chain_start, seq=100, detail="unclean shutdown")) + "\n"
    + "!K" + J({"time": T, "reason": "start"}) + "\n"
    + "!R" + J(dict(open_rec, seq=102)) + "\n"
    + "!K" + J({"time": T, "reason": "unmount"}) + "\n"
    + "#HEAD\n=\n"
    + "#BASE\n" + J({"segment": 3, "seq": 100, "prev_chain": "=", "prev_signature": "",
                      "time": T, "signature": "="}) + "\n")

# audit_record ----------------------------------------------------------------------------------
put("audit_record", "open", J(open_rec))
put("audit_record", "close", J(close_rec))
put("audit_record", "chain-start", J(chain_start))
put("audit_record", "checkpoint", J({"seq": 1, "time": T, "segment": 1, "chain": "ab" * 32,
                                     "prev_signature": "", "signature": "cd" * 64, "reason": "start"}))

# policy ----------------------------------------------------------------------------------------
readme_policy = {"Version": "2012-10-17", "Statement": [
    {"Sid": "KeyAdmins", "Effect": "Allow", "Principal": {"Group": "keyadmins"},
     "Action": ["kms:Describe*", "kms:PutKeyPolicy", "kms:Enable*", "kms:Disable*", "kms:Rotate*",
                "kms:ScheduleKeyDeletion", "kms:CancelKeyDeletion", "kms:*Grant*"]},
    {"Sid": "KeyUsers", "Effect": "Allow", "Principal": {"Group": "finance"},
     "Action": ["kms:Decrypt", "kms:GenerateDataKey"]},
    {"Sid": "BackupReadsOnly", "Effect": "Allow", "Principal": {"User": "backup"}, "Action": "kms:Decrypt",
     "Condition": {"StringEquals": {"kmsfs:Executable": ["/usr/bin/restic", "/usr/bin/rsync"],
                                    "kmsfs:AccessMode": "read"}}},
    {"Sid": "ContractorUntilFriday", "Effect": "Allow", "Principal": {"User": "carol"}, "Action": "kms:Decrypt",
     "Condition": {"StringLike": {"kmsfs:Path": "/finance/q4/*"},
                   "DateLessThan": {"aws:CurrentTime": "2026-11-28T18:00:00Z"}}}]}
put("policy", "readme", json.dumps(readme_policy, indent=1))
put("policy", "default", json.dumps({"Version": "2012-10-17", "Statement": [
    {"Sid": "OwnerFullControl", "Effect": "Allow", "Principal": {"Uid": "0"}, "Action": "kms:*", "Resource": "*"}]}))
put("policy", "conditions", json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Deny", "Principal": "*", "Action": ["kms:Decrypt", "kms:ReEncrypt?rom"],
     "Resource": ["c3c3c3c3-c3c3-c3c3-c3c3-c3c3c3c3c3c3", "0f0e*"],
     "Condition": {"NumericGreaterThanEquals": {"kmsfs:Uid": 1000}, "NumericLessThan": {"kmsfs:Gid": ["100", 27]},
                   "StringNotLike": {"kms:EncryptionContext:kmsfs:file-id": "a0*"},
                   "StringNotEquals": {"kmsfs:User": ["carol", "bob"]},
                   "DateGreaterThan": {"kmsfs:CurrentTime": "1795000000"}, "Bool": {"kmsfs:AccessMode": True}}},
    {"Sid": "s2", "Effect": "Allow", "Principal": {"Uid": [1001], "Gid": "100", "Group": ["finance"], "User": "carol"},
     "Action": "kms:*", "Condition": {"NumericEquals": {"kmsfs:Uid": "1001"}, "DateLessThanEquals": {"aws:CurrentTime": "2030-01-01T00:00:00Z"}}}]}))
put("policy", "grant", json.dumps(rich["grants"][0]))

# control_request -------------------------------------------------------------------------------
reqs = {
    "create-key": {"op": "CreateKey", "description": "finance", "tags": {"team": "finance"}, "alias": "alias/finance"},
    "list-keys": {"op": "ListKeys"},
    "schedule-deletion": {"op": "ScheduleKeyDeletion", "key": "alias/finance", "days": 7},
    "import": {"op": "ImportKeyMaterial", "key": key_id, "material": "ab" * 32},
    "put-policy": {"op": "PutKeyPolicy", "key": key_id, "policy": json.dumps(readme_policy), "bypass_lockout_check": False},
    "simulate": {"op": "SimulatePolicy", "key": key_id, "action": "kms:Decrypt",
                 "request": {"uid": 1001, "gid": 100, "groups": [27], "user": "carol", "group_names": ["finance"],
                             "exe": "/usr/bin/cat", "path": "/finance/q4/x", "access_mode": "read",
                             "encryption_context": {"kmsfs:key-version": "1"}}},
    "create-grant": {"op": "CreateGrant", "key": key_id, "grant": {
        "name": "backup", "grantee": {"any": False, "uids": [34], "users": ["backup"], "gids": [], "groups": []},
        "operations": ["kms:Decrypt"], "path_like": "/srv/*", "encryption_context_subset": {"a": "b"},
        "expires": 1900000000, "retiring_principal": None}},
    "put-rules": {"op": "PutKeyRules", "rules": [{"prefix": "/finance", "key": "alias/finance"}]},
    "rotation": {"op": "SetKeyRotation", "key": key_id, "enabled": True, "period_days": 90},
    "alerts": {"op": "PutAlertSettings", "denials_per_minute": 5},
    "rewrap": {"op": "Rewrap", "key": None, "rules": True},
    "trim": {"op": "TrimKeyVersions", "key": key_id, "below": 2, "force": True},
}
for name, r in reqs.items():
    put("control_request", name, json.dumps(r))
put("control_request", "rules-doc", json.dumps([{"prefix": "/a", "key": key_id}, {"prefix": "/", "key": "alias/x"}]))

# id_strings ------------------------------------------------------------------------------------
put("id_strings", "key-id", key_id)
put("id_strings", "volume-id", ks["volume-id"])
put("id_strings", "segment-name", "seg-00000001.log")
put("id_strings", "recovery-key", vector("key-store-recovery-key.txt")["recovery-key"])
