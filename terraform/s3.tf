# Buckets: raw click drops, MLflow artifacts, the DVC remote and the MWAA DAGs; all private, KMS-encrypted,
# versioned, TLS-only, access-logged into the logs bucket, with lifecycle rules. Raw drops hold
# pseudonymous user ids: they expire after var.raw_retention_days (GDPR storage limitation), and
# `newsrec forget-user` rewrites the drops that mention an erased user (old versions expire after 7 days).
locals {
  bucket_prefix = "${local.name}-%s-${local.account_id}"
}

module "raw_bucket" {
  source                = "./modules/private_bucket"
  name                  = format(local.bucket_prefix, "raw")
  purpose               = "hourly click drops (pseudonymous user ids)"
  kms_key_arn           = aws_kms_key.main.arn
  log_bucket            = aws_s3_bucket.logs.id
  expire_days           = var.raw_retention_days
  noncurrent_days       = 7
  infrequent_after_days = 30
}

module "artifacts_bucket" {
  source                = "./modules/private_bucket"
  name                  = format(local.bucket_prefix, "artifacts")
  purpose               = "MLflow artifacts: models and their serving bundles"
  kms_key_arn           = aws_kms_key.main.arn
  log_bucket            = aws_s3_bucket.logs.id
  noncurrent_days       = 90
  infrequent_after_days = 60
}

module "dvc_bucket" {
  source                = "./modules/private_bucket"
  name                  = format(local.bucket_prefix, "dvc")
  purpose               = "DVC remote: versioned data, features and models"
  kms_key_arn           = aws_kms_key.main.arn
  log_bucket            = aws_s3_bucket.logs.id
  noncurrent_days       = 30
  infrequent_after_days = 30
}

module "dags_bucket" {
  source          = "./modules/private_bucket"
  name            = format(local.bucket_prefix, "dags")
  purpose         = "MWAA: DAGs, requirements and the project's wheel"
  kms_key_arn     = aws_kms_key.main.arn
  log_bucket      = aws_s3_bucket.logs.id
  noncurrent_days = 30
}

locals {
  bucket = {
    raw       = module.raw_bucket
    artifacts = module.artifacts_bucket
    dvc       = module.dvc_bucket
    dags      = module.dags_bucket
  }
}

# --- access logs of the buckets above and of the load balancer -----------------------------------------

resource "aws_s3_bucket" "logs" {
  #checkov:skip=CKV_AWS_145:ALB access-log delivery only supports SSE-S3 (AES256), not SSE-KMS; the bucket holds request metadata, no payloads.
  #checkov:skip=CKV_AWS_18:This is the access-log bucket itself; logging it into itself would loop.
  #checkov:skip=CKV_AWS_144:Access logs are kept in-region; replicating them is not needed for an audit trail.
  #checkov:skip=CKV2_AWS_62:No consumer of object notifications on access logs.
  bucket        = "${local.name}-logs-${local.account_id}"
  force_destroy = false
}

resource "aws_s3_bucket_public_access_block" "logs" {
  bucket                  = aws_s3_bucket.logs.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "logs" {
  bucket = aws_s3_bucket.logs.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_versioning" "logs" {
  bucket = aws_s3_bucket.logs.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "logs" {
  bucket = aws_s3_bucket.logs.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "logs" {
  bucket = aws_s3_bucket.logs.id
  rule {
    id     = "retention"
    status = "Enabled"
    filter {}
    transition {
      days          = 30
      storage_class = "STANDARD_IA"
    }
    expiration {
      days = var.log_retention_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 7
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 2
    }
  }
}

data "aws_elb_service_account" "main" {}

data "aws_iam_policy_document" "logs" {
  statement {
    sid       = "S3ServerAccessLogs"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.logs.arn}/s3/*"]
    principals {
      type        = "Service"
      identifiers = ["logging.s3.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }

  statement {
    sid       = "AlbAccessLogs"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.logs.arn}/alb/AWSLogs/${local.account_id}/*"]
    principals {
      type        = "AWS"
      identifiers = [data.aws_elb_service_account.main.arn]
    }
  }

  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.logs.arn,
      "${aws_s3_bucket.logs.arn}/*",
    ]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "logs" {
  bucket = aws_s3_bucket.logs.id
  policy = data.aws_iam_policy_document.logs.json
}
