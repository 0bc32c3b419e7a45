# A Redis replication group the way the stack runs each of its Redis stores: a primary and a replica per AZ
# with automatic failover, encrypted at rest (the stack's key) and in transit, AUTH required, slow log to
# CloudWatch, and its rediss:// URL (with the token) as a Secrets Manager secret for the tasks that use it.
terraform {
  required_providers {
    aws = {
      source = "hashicorp/aws"
    }
    random = {
      source = "hashicorp/random"
    }
  }
}

variable "id" {
  description = "Replication group id."
  type        = string
}

variable "description" {
  description = "What the store holds."
  type        = string
}

variable "node_type" {
  description = "ElastiCache node type."
  type        = string
}

variable "parameter_group_name" {
  description = "Parameter group (its maxmemory-policy decides what a full store does)."
  type        = string
}

variable "num_cache_clusters" {
  description = "Nodes: one per AZ."
  type        = number
}

variable "subnet_group_name" {
  type = string
}

variable "security_group_ids" {
  type = list(string)
}

variable "kms_key_arn" {
  description = "Key for the data at rest, the slow log's group and the secret."
  type        = string
}

variable "log_group_name" {
  description = "CloudWatch log group receiving the slow log."
  type        = string
}

variable "snapshot_retention_limit" {
  description = "Daily snapshots kept."
  type        = number
}

variable "secret_name" {
  description = "Name of the secret holding the rediss:// URL."
  type        = string
}

variable "secret_description" {
  type = string
}

resource "random_password" "auth" {
  length  = 48
  special = false
}

resource "aws_elasticache_replication_group" "this" {
  replication_group_id = var.id
  description          = var.description
  engine               = "redis"
  engine_version       = "7.1"
  node_type            = var.node_type
  port                 = 6379
  parameter_group_name = var.parameter_group_name

  num_cache_clusters         = var.num_cache_clusters
  automatic_failover_enabled = true
  multi_az_enabled           = true
  subnet_group_name          = var.subnet_group_name
  security_group_ids         = var.security_group_ids

  at_rest_encryption_enabled = true
  kms_key_id                 = var.kms_key_arn
  transit_encryption_enabled = true
  auth_token                 = random_password.auth.result

  snapshot_retention_limit   = var.snapshot_retention_limit
  snapshot_window            = "01:00-02:00"
  maintenance_window         = "sun:04:30-sun:05:30"
  auto_minor_version_upgrade = true

  log_delivery_configuration {
    destination      = var.log_group_name
    destination_type = "cloudwatch-logs"
    log_format       = "json"
    log_type         = "slow-log"
  }
}

resource "aws_secretsmanager_secret" "url" {
  #checkov:skip=CKV2_AWS_57:ElastiCache AUTH tokens rotate through modify-replication-group with ROTATE, run from the runbook (docs/deployment.md); a rotation Lambda for it is not worth its attack surface.
  name                    = var.secret_name
  description             = var.secret_description
  kms_key_id              = var.kms_key_arn
  recovery_window_in_days = 7
}

resource "aws_secretsmanager_secret_version" "url" {
  secret_id     = aws_secretsmanager_secret.url.id
  secret_string = "rediss://:${random_password.auth.result}@${aws_elasticache_replication_group.this.primary_endpoint_address}:6379/0"
}

output "id" {
  value = aws_elasticache_replication_group.this.id
}

output "secret_arn" {
  value = aws_secretsmanager_secret.url.arn
}

output "secret_name" {
  value = aws_secretsmanager_secret.url.name
}
