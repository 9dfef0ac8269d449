#!/usr/bin/env python3
"""Looks at an S3 bucket from outside Cairn, with boto3 (installed with
moto), the way an auditor or an attacker holding the keys would.

Usage: s3.py ENDPOINT COMMAND BUCKET [KEY]
  plain-bucket   create a bucket without versioning or Object Lock
  audit          JSON: every key with its lock mode, retain-until and version count
  originals      JSON: every key with the retain-until of its oldest version
                 (the one Cairn wrote) and its version count
  start-upload   start a multipart upload of KEY and send one part, never
                 completed (as a backup killed mid-upload leaves it)
  uploads        how many multipart uploads are open
  delete-locked  try to delete the (only) version of KEY; print the error code
  overwrite      put garbage under KEY; print the number of versions after
  delete-all     delete every key (under PREFIX, if given) as `aws s3 rm
                 --recursive` does (a delete marker on top of each; locked
                 versions stay)
  overwrite-all  put random bytes of each object's size over every key under
                 PREFIX (as a ransomware re-encrypting the bucket in place
                 does); print how many
  edit-json      set FIELD to the JSON VALUE in the JSON object under KEY
                 (args: KEY FIELD VALUE), as a new version
"""
import json, os, sys, boto3, botocore

endpoint, cmd, bucket = sys.argv[1:4]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="test", aws_secret_access_key="test")
if cmd == "plain-bucket":
    s3.create_bucket(Bucket=bucket)
elif cmd == "audit":
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            h = s3.head_object(Bucket=bucket, Key=o["Key"])
            versions = s3.list_object_versions(Bucket=bucket, Prefix=o["Key"]).get("Versions", [])
            out[o["Key"]] = {
                "size": o["Size"],
                "etag": h.get("ETag"),
                "mode": h.get("ObjectLockMode"),
                "until": h["ObjectLockRetainUntilDate"].isoformat() if "ObjectLockRetainUntilDate" in h else None,
                "versions": len([v for v in versions if v["Key"] == o["Key"]]),
            }
    print(json.dumps(out))
elif cmd == "originals":
    versions = {}
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for v in page.get("Versions", []):
            versions.setdefault(v["Key"], []).append(v)
    out = {}
    for key, vs in versions.items():
        oldest = min(vs, key=lambda v: v["LastModified"])
        h = s3.head_object(Bucket=bucket, Key=key, VersionId=oldest["VersionId"])
        out[key] = {
            "until": h["ObjectLockRetainUntilDate"].isoformat() if "ObjectLockRetainUntilDate" in h else None,
            "versions": len(vs),
        }
    print(json.dumps(out))
elif cmd == "start-upload":
    key = sys.argv[4]
    u = s3.create_multipart_upload(Bucket=bucket, Key=key)
    s3.upload_part(Bucket=bucket, Key=key, UploadId=u["UploadId"], PartNumber=1, Body=os.urandom(5 << 20))
elif cmd == "uploads":
    print(len(s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])))
elif cmd == "delete-locked":
    key = sys.argv[4]
    v = [x for x in s3.list_object_versions(Bucket=bucket, Prefix=key)["Versions"] if x["Key"] == key][0]
    try:
        s3.delete_object(Bucket=bucket, Key=key, VersionId=v["VersionId"])
        print("deleted")
    except botocore.exceptions.ClientError as e:
        print(e.response["Error"]["Code"])
elif cmd == "overwrite":
    key = sys.argv[4]
    s3.put_object(Bucket=bucket, Key=key, Body=b"garbage from an attacker")
    print(len([x for x in s3.list_object_versions(Bucket=bucket, Prefix=key)["Versions"] if x["Key"] == key]))
elif cmd == "overwrite-all":
    import os
    n = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=sys.argv[4]):
        for o in page.get("Contents", []):
            s3.put_object(Bucket=bucket, Key=o["Key"], Body=os.urandom(o["Size"]))
            n += 1
    print(n)
elif cmd == "copy-over":
    # Every object under one prefix put again under another (a version on
    # top of what is there).
    src, dst = sys.argv[4:6]
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=src):
        for o in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            s3.put_object(Bucket=bucket, Key=dst + o["Key"][len(src):], Body=body)
elif cmd == "edit-json":
    key, field, value = sys.argv[4:7]
    doc = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    doc[field] = json.loads(value)
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(doc).encode())
elif cmd == "delete-all":
    # Every key ever written (a key deleted already gets one more marker,
    # as a wipe run twice leaves them).
    prefix = sys.argv[4] if len(sys.argv) > 4 else ""
    keys = set()
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        keys.update(v["Key"] for v in page.get("Versions", []))
    for k in sorted(keys):
        s3.delete_object(Bucket=bucket, Key=k)
    print(len(keys))
