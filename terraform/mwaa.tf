# Managed Airflow runs the DAGs in dags/ (synced by the deploy workflow into the DAGs bucket with the
# project's wheel in plugins.zip and a requirements file pinned like requirements.lock; both must exist
# before the first apply: run the workflow's sync step once, then apply). Private web server, workers in the private subnets,
# every log type to CloudWatch, encrypted with the stack's key. Alert emails go out through SES SMTP with the
# credentials held in the `smtp_default` Airflow connection in Secrets Manager.
resource "aws_security_group" "mwaa" {
  name        = "${local.name}-mwaa"
  description = "MWAA scheduler, workers and web server"
  vpc_id      = aws_vpc.main.id
}

# MWAA's components talk to each other on many ports; AWS requires this self-referencing rule.
resource "aws_vpc_security_group_ingress_rule" "mwaa_self" {
  security_group_id            = aws_security_group.mwaa.id
  description                  = "MWAA components among themselves"
  referenced_security_group_id = aws_security_group.mwaa.id
  ip_protocol                  = "-1"
}

resource "aws_vpc_security_group_egress_rule" "mwaa_https" {
  security_group_id = aws_security_group.mwaa.id
  description       = "AWS APIs (S3, SQS, CloudWatch, Secrets Manager, SES) over HTTPS"
  cidr_ipv4         = "0.0.0.0/0"
  from_port         = 443
  to_port           = 443
  ip_protocol       = "tcp"
}

# Includes MWAA's own metadata database and web server endpoints, which sit in these subnets with this group.
resource "aws_vpc_security_group_egress_rule" "mwaa_self" {
  security_group_id            = aws_security_group.mwaa.id
  description                  = "MWAA components and endpoints among themselves"
  referenced_security_group_id = aws_security_group.mwaa.id
  ip_protocol                  = "-1"
}

resource "aws_vpc_security_group_egress_rule" "mwaa_mlflow" {
  security_group_id            = aws_security_group.mwaa.id
  description                  = "MLflow (register, promote, load the champion for drift)"
  referenced_security_group_id = aws_security_group.services.id
  from_port                    = 5000
  to_port                      = 5000
  ip_protocol                  = "tcp"
}

resource "aws_vpc_security_group_egress_rule" "mwaa_ses_smtp" {
  security_group_id = aws_security_group.mwaa.id
  description       = "SES SMTP (STARTTLS) for alert emails"
  cidr_ipv4         = "0.0.0.0/0"
  from_port         = 587
  to_port           = 587
  ip_protocol       = "tcp"
}

resource "aws_vpc_security_group_ingress_rule" "services_mlflow_from_mwaa" {
  security_group_id            = aws_security_group.services.id
  description                  = "MLflow from the Airflow workers (register, promote)"
  referenced_security_group_id = aws_security_group.mwaa.id
  from_port                    = 5000
  to_port                      = 5000
  ip_protocol                  = "tcp"
}

# refresh_index writes each hourly index's readers to the users' Redis (elasticache.tf) before publishing it.
resource "aws_vpc_security_group_egress_rule" "mwaa_users_redis" {
  security_group_id            = aws_security_group.mwaa.id
  description                  = "Users' state Redis (refresh_index)"
  referenced_security_group_id = aws_security_group.data.id
  from_port                    = 6379
  to_port                      = 6379
  ip_protocol                  = "tcp"
}

resource "aws_vpc_security_group_ingress_rule" "data_redis_from_mwaa" {
  security_group_id            = aws_security_group.data.id
  description                  = "Redis from the Airflow workers (refresh_index writes the users' state)"
  referenced_security_group_id = aws_security_group.mwaa.id
  from_port                    = 6379
  to_port                      = 6379
  ip_protocol                  = "tcp"
}

resource "aws_s3_object" "mwaa_startup" {
  bucket = local.bucket["dags"].id
  key    = "startup/startup.sh"
  # The erasure key goes by name (the execution role may read ${local.name}/airflow/*); the script fetches it.
  content = templatefile("${path.module}/mwaa/startup.sh", {
    raw_uri            = "s3://${local.bucket["raw"].id}/globo"
    mlflow_url         = local.mlflow_url
    alerts_from        = "newsrec-alerts@${var.domain_name}"
    alerts_to          = join(",", var.drift_alert_recipients)
    erasure_key_secret = aws_secretsmanager_secret.erasure_key.name
    index_uri          = local.serving_index_uri
    user_store_secret  = module.users_redis.secret_name
  })
  kms_key_id = aws_kms_key.main.arn
}

resource "aws_mwaa_environment" "main" {
  name              = local.name
  airflow_version   = var.mwaa_airflow_version
  environment_class = "mw1.medium"
  min_workers       = 1
  max_workers       = 5
  schedulers        = 2

  source_bucket_arn                = local.bucket["dags"].arn
  dag_s3_path                      = "dags/"
  requirements_s3_path             = "requirements/requirements.txt"
  plugins_s3_path                  = "plugins.zip"
  startup_script_s3_path           = aws_s3_object.mwaa_startup.key
  startup_script_s3_object_version = aws_s3_object.mwaa_startup.version_id

  execution_role_arn    = aws_iam_role.mwaa.arn
  kms_key               = aws_kms_key.main.arn
  webserver_access_mode = "PRIVATE_ONLY"

  network_configuration {
    security_group_ids = [aws_security_group.mwaa.id]
    subnet_ids         = slice(aws_subnet.private[*].id, 0, 2)
  }

  airflow_configuration_options = {
    "core.load_examples"           = "false"
    "secrets.backend"              = "airflow.providers.amazon.aws.secrets.secrets_manager.SecretsManagerBackend"
    "secrets.backend_kwargs"       = jsonencode({ connections_prefix = "${local.name}/airflow/connections", variables_prefix = "${local.name}/airflow/variables" })
    "scheduler.catchup_by_default" = "false"
  }

  logging_configuration {
    dag_processing_logs {
      enabled   = true
      log_level = "INFO"
    }
    scheduler_logs {
      enabled   = true
      log_level = "INFO"
    }
    task_logs {
      enabled   = true
      log_level = "INFO"
    }
    webserver_logs {
      enabled   = true
      log_level = "WARNING"
    }
    worker_logs {
      enabled   = true
      log_level = "INFO"
    }
  }
}
