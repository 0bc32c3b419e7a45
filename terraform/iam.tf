# Least privilege: each task and service gets a role of its own with only the actions and resources it
# uses. The API and the dashboard call no AWS API at all (models come through MLflow's artifact proxy), so
# their task roles carry no policy; only MLflow may touch the artifacts bucket.
data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:${local.partition}:ecs:${var.region}:${local.account_id}:*"]
    }
  }
}

# --- shared execution role: pull images, write logs, read the two secrets tasks get -------------------

resource "aws_iam_role" "task_execution" {
  name               = "${local.name}-task-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

resource "aws_iam_role_policy_attachment" "task_execution" {
  role       = aws_iam_role.task_execution.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

data "aws_iam_policy_document" "task_execution_secrets" {
  statement {
    sid     = "InjectedSecrets"
    actions = ["secretsmanager:GetSecretValue"]
    resources = [
      module.state_redis.secret_arn,
      module.users_redis.secret_arn,
      aws_db_instance.mlflow.master_user_secret[0].secret_arn,
    ]
  }
  statement {
    sid       = "DecryptSecretsAndImages"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.main.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["secretsmanager.${var.region}.amazonaws.com", "ecr.${var.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "task_execution_secrets" {
  name   = "injected-secrets"
  role   = aws_iam_role.task_execution.id
  policy = data.aws_iam_policy_document.task_execution_secrets.json
}

# --- task roles -------------------------------------------------------------------------------------------

resource "aws_iam_role" "api" {
  name               = "${local.name}-api"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

# The hourly serving index that refresh_index mirrors to the artifacts bucket (params refresh.publish_uri): the
# API tasks get and list under its prefix and nothing else there; the MWAA workers also write it.
data "aws_iam_policy_document" "serving_index_read" {
  statement {
    sid       = "ServingIndexObjects"
    actions   = ["s3:GetObject"]
    resources = ["${local.bucket["artifacts"].arn}/serving_index/*"]
  }
  statement {
    sid       = "ServingIndexListing"
    actions   = ["s3:ListBucket"]
    resources = [local.bucket["artifacts"].arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["serving_index/*", "serving_index"]
    }
  }
}

data "aws_iam_policy_document" "api" {
  source_policy_documents = [data.aws_iam_policy_document.serving_index_read.json]
  statement {
    sid       = "ServingIndexDecryption"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.main.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "api" {
  name   = "serving-index"
  role   = aws_iam_role.api.id
  policy = data.aws_iam_policy_document.api.json
}

resource "aws_iam_role" "dashboard" {
  name               = "${local.name}-dashboard"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

resource "aws_iam_role" "mlflow" {
  name               = "${local.name}-mlflow"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

data "aws_iam_policy_document" "mlflow" {
  statement {
    sid       = "ArtifactObjects"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    resources = ["${local.bucket["artifacts"].arn}/mlflow/*"]
  }
  statement {
    sid       = "ArtifactListing"
    actions   = ["s3:ListBucket"]
    resources = [local.bucket["artifacts"].arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["mlflow/*", "mlflow"]
    }
  }
  statement {
    sid       = "ArtifactEncryption"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.main.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "mlflow" {
  name   = "artifacts"
  role   = aws_iam_role.mlflow.id
  policy = data.aws_iam_policy_document.mlflow.json
}

# The Dask scheduler relays data but touches no AWS API; the workers only mount the data root, read-only
# (ClientMount without ClientWrite), through its access point.
resource "aws_iam_role" "dask_scheduler" {
  name               = "${local.name}-dask-scheduler"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

resource "aws_iam_role" "dask_worker" {
  name               = "${local.name}-dask-worker"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

data "aws_iam_policy_document" "dask_worker" {
  statement {
    sid       = "ReadTheDataRoot"
    actions   = ["elasticfilesystem:ClientMount"]
    resources = [aws_efs_file_system.data.arn]
    condition {
      test     = "StringEquals"
      variable = "elasticfilesystem:AccessPointArn"
      values   = [aws_efs_access_point.data.arn]
    }
  }
}

resource "aws_iam_role_policy" "dask_worker" {
  name   = "data-root-read-only"
  role   = aws_iam_role.dask_worker.id
  policy = data.aws_iam_policy_document.dask_worker.json
}

# --- MWAA execution role -----------------------------------------------------------------------------------

data "aws_iam_policy_document" "mwaa_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["airflow.amazonaws.com", "airflow-env.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "mwaa" {
  name               = "${local.name}-mwaa"
  assume_role_policy = data.aws_iam_policy_document.mwaa_assume.json
}

data "aws_iam_policy_document" "mwaa" {
  source_policy_documents = [data.aws_iam_policy_document.serving_index_read.json]
  statement {
    sid       = "PublishMetrics"
    actions   = ["airflow:PublishMetrics"]
    resources = ["arn:${local.partition}:airflow:${var.region}:${local.account_id}:environment/${local.name}"]
  }
  statement {
    sid       = "ReadDagsBucket"
    actions   = ["s3:GetObject*", "s3:GetBucket*", "s3:List*"]
    resources = [local.bucket["dags"].arn, "${local.bucket["dags"].arn}/*"]
  }
  # Hourly drops are read and validated; forget-user rewrites the drops that mention an erased user.
  statement {
    sid       = "RawDrops"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    resources = ["${local.bucket["raw"].arn}/*", "${local.bucket["dvc"].arn}/*"]
  }
  statement {
    sid       = "ListRawAndDvc"
    actions   = ["s3:ListBucket"]
    resources = [local.bucket["raw"].arn, local.bucket["dvc"].arn]
  }
  # refresh_index mirrors every hourly serving index there for the API tasks (params refresh.publish_uri).
  statement {
    sid       = "ServingIndexMirror"
    actions   = ["s3:PutObject", "s3:DeleteObject"]
    resources = ["${local.bucket["artifacts"].arn}/serving_index/*"]
  }
  statement {
    sid = "Logs"
    actions = [
      "logs:CreateLogStream", "logs:CreateLogGroup", "logs:PutLogEvents", "logs:GetLogEvents",
      "logs:GetLogRecord", "logs:GetLogGroupFields", "logs:GetQueryResults",
    ]
    resources = ["arn:${local.partition}:logs:${var.region}:${local.account_id}:log-group:airflow-${local.name}-*"]
  }
  statement {
    sid       = "DescribeLogGroups"
    actions   = ["logs:DescribeLogGroups", "cloudwatch:PutMetricData"]
    resources = ["*"]
  }
  statement {
    sid = "CeleryQueues"
    actions = [
      "sqs:ChangeMessageVisibility", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:GetQueueUrl",
      "sqs:ReceiveMessage", "sqs:SendMessage",
    ]
    resources = ["arn:${local.partition}:sqs:${var.region}:*:airflow-celery-*"]
  }
  statement {
    sid       = "AirflowConnectionsAndVariables"
    actions   = ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"]
    resources = ["arn:${local.partition}:secretsmanager:${var.region}:${local.account_id}:secret:${local.name}/airflow/*"]
  }
  statement {
    sid       = "StackKey"
    actions   = ["kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKey*", "kms:Encrypt"]
    resources = [aws_kms_key.main.arn]
    condition {
      test     = "StringLike"
      variable = "kms:ViaService"
      values = [
        "sqs.${var.region}.amazonaws.com", "s3.${var.region}.amazonaws.com",
        "secretsmanager.${var.region}.amazonaws.com", "logs.${var.region}.amazonaws.com",
      ]
    }
  }
}

resource "aws_iam_role_policy" "mwaa" {
  name   = "mwaa-execution"
  role   = aws_iam_role.mwaa.id
  policy = data.aws_iam_policy_document.mwaa.json
}

# --- service roles -----------------------------------------------------------------------------------------

data "aws_iam_policy_document" "codedeploy_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["codedeploy.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "codedeploy" {
  name               = "${local.name}-codedeploy"
  assume_role_policy = data.aws_iam_policy_document.codedeploy_assume.json
}

resource "aws_iam_role_policy_attachment" "codedeploy" {
  role       = aws_iam_role.codedeploy.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AWSCodeDeployRoleForECS"
}

data "aws_iam_policy_document" "rds_monitoring_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["monitoring.rds.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "rds_monitoring" {
  name               = "${local.name}-rds-monitoring"
  assume_role_policy = data.aws_iam_policy_document.rds_monitoring_assume.json
}

resource "aws_iam_role_policy_attachment" "rds_monitoring" {
  role       = aws_iam_role.rds_monitoring.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}

data "aws_iam_policy_document" "flow_logs_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["vpc-flow-logs.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "flow_logs" {
  name               = "${local.name}-flow-logs"
  assume_role_policy = data.aws_iam_policy_document.flow_logs_assume.json
}

data "aws_iam_policy_document" "flow_logs" {
  statement {
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    resources = ["${aws_cloudwatch_log_group.flow.arn}:*"]
  }
}

resource "aws_iam_role_policy" "flow_logs" {
  name   = "flow-logs"
  role   = aws_iam_role.flow_logs.id
  policy = data.aws_iam_policy_document.flow_logs.json
}

# --- CI/CD: GitHub Actions on the main branch's `production` environment, through OIDC (no stored keys) ---

resource "aws_iam_openid_connect_provider" "github" {
  url            = "https://token.actions.githubusercontent.com"
  client_id_list = ["sts.amazonaws.com"]
}

data "aws_iam_policy_document" "github_assume" {
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [aws_iam_openid_connect_provider.github.arn]
    }
    condition {
      test     = "StringEquals"
      variable = "token.actions.githubusercontent.com:aud"
      values   = ["sts.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "token.actions.githubusercontent.com:sub"
      values   = ["repo:${var.github_repository}:environment:production"]
    }
  }
}

resource "aws_iam_role" "deploy" {
  name                 = "${local.name}-github-deploy"
  assume_role_policy   = data.aws_iam_policy_document.github_assume.json
  max_session_duration = 3600
}

data "aws_iam_policy_document" "deploy" {
  statement {
    sid       = "EcrLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }
  statement {
    sid = "PushImages"
    actions = [
      "ecr:BatchCheckLayerAvailability", "ecr:InitiateLayerUpload", "ecr:UploadLayerPart",
      "ecr:CompleteLayerUpload", "ecr:PutImage", "ecr:BatchGetImage", "ecr:DescribeImages",
    ]
    resources = [for repo in aws_ecr_repository.images : repo.arn]
  }
  statement {
    sid       = "RegisterTaskDefinitions"
    actions   = ["ecs:RegisterTaskDefinition", "ecs:DescribeTaskDefinition"]
    resources = ["*"]
  }
  statement {
    sid     = "UpdateServices"
    actions = ["ecs:DescribeServices", "ecs:UpdateService"]
    resources = [
      aws_ecs_service.api.id, aws_ecs_service.dashboard.id, aws_ecs_service.mlflow.id,
      aws_ecs_service.dask_scheduler.id, aws_ecs_service.dask_worker.id,
    ]
  }
  statement {
    sid     = "PassOnlyTheTaskRoles"
    actions = ["iam:PassRole"]
    resources = [
      aws_iam_role.task_execution.arn, aws_iam_role.api.arn, aws_iam_role.dashboard.arn, aws_iam_role.mlflow.arn,
      aws_iam_role.dask_scheduler.arn, aws_iam_role.dask_worker.arn,
    ]
    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ecs-tasks.amazonaws.com"]
    }
  }
  statement {
    sid = "CanaryDeploys"
    actions = [
      "codedeploy:CreateDeployment", "codedeploy:GetDeployment", "codedeploy:GetDeploymentConfig",
      "codedeploy:GetApplicationRevision", "codedeploy:RegisterApplicationRevision", "codedeploy:StopDeployment",
    ]
    resources = [
      aws_codedeploy_app.api.arn,
      "arn:${local.partition}:codedeploy:${var.region}:${local.account_id}:deploymentgroup:${aws_codedeploy_app.api.name}/${aws_codedeploy_deployment_group.api.deployment_group_name}",
      "arn:${local.partition}:codedeploy:${var.region}:${local.account_id}:deploymentconfig:*",
    ]
  }
  statement {
    sid       = "SyncDags"
    actions   = ["s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:ListBucket"]
    resources = [local.bucket["dags"].arn, "${local.bucket["dags"].arn}/*"]
  }
  statement {
    sid       = "PointMwaaAtTheNewPluginsAndRequirements"
    actions   = ["airflow:UpdateEnvironment", "airflow:GetEnvironment"]
    resources = [aws_mwaa_environment.main.arn]
  }
  statement {
    sid       = "PassTheMwaaRole"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.mwaa.arn]
    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["airflow.amazonaws.com"]
    }
  }
  statement {
    sid       = "EncryptUploads"
    actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
    resources = [aws_kms_key.main.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.amazonaws.com", "ecr.${var.region}.amazonaws.com"]
    }
  }
  statement {
    sid       = "WatchAlarms"
    actions   = ["cloudwatch:DescribeAlarms"]
    resources = ["arn:${local.partition}:cloudwatch:${var.region}:${local.account_id}:alarm:${local.name}-*"]
  }
}

resource "aws_iam_role_policy" "deploy" {
  name   = "deploy"
  role   = aws_iam_role.deploy.id
  policy = data.aws_iam_policy_document.deploy.json
}
