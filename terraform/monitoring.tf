# Alarms page the on-call list through SNS; the API alarms also gate canary deploys (codedeploy.tf).
# Thresholds and what to do when each fires: docs/deployment.md, "Runbook".
resource "aws_sns_topic" "alarms" {
  name              = "${local.name}-alarms"
  kms_master_key_id = aws_kms_key.main.arn
}

resource "aws_sns_topic_subscription" "alarms_email" {
  topic_arn = aws_sns_topic.alarms.arn
  protocol  = "email"
  endpoint  = var.alarm_email
}

locals {
  alarm_actions = [aws_sns_topic.alarms.arn]
  dag_ids       = toset(["clicks_hourly", "train_ranker", "drift_monitor"])
}

# --- API (per target group: the canary's own target group trips its own alarm) -------------------------

resource "aws_cloudwatch_metric_alarm" "api_p99_latency" {
  for_each            = aws_lb_target_group.api
  alarm_name          = "${local.name}-api-p99-latency-${each.key}"
  alarm_description   = "API p99 latency above ${var.api_p99_latency_threshold_s * 1000} ms for 3 minutes (runbook: API latency)"
  namespace           = "AWS/ApplicationELB"
  metric_name         = "TargetResponseTime"
  extended_statistic  = "p99"
  period              = 60
  evaluation_periods  = 3
  datapoints_to_alarm = 3
  threshold           = var.api_p99_latency_threshold_s
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  dimensions = {
    LoadBalancer = aws_lb.main.arn_suffix
    TargetGroup  = each.value.arn_suffix
  }
  alarm_actions = local.alarm_actions
  ok_actions    = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "api_5xx_rate" {
  for_each            = aws_lb_target_group.api
  alarm_name          = "${local.name}-api-5xx-rate-${each.key}"
  alarm_description   = "More than 1% of API responses are 5xx for 3 minutes (runbook: API errors)"
  evaluation_periods  = 3
  datapoints_to_alarm = 3
  threshold           = 1
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"

  metric_query {
    id          = "rate"
    expression  = "100 * FILL(errors, 0) / IF(requests > 0, requests, 1)"
    label       = "5xx %"
    return_data = true
  }
  metric_query {
    id = "errors"
    metric {
      namespace   = "AWS/ApplicationELB"
      metric_name = "HTTPCode_Target_5XX_Count"
      period      = 60
      stat        = "Sum"
      dimensions = {
        LoadBalancer = aws_lb.main.arn_suffix
        TargetGroup  = each.value.arn_suffix
      }
    }
  }
  metric_query {
    id = "requests"
    metric {
      namespace   = "AWS/ApplicationELB"
      metric_name = "RequestCount"
      period      = 60
      stat        = "Sum"
      dimensions = {
        LoadBalancer = aws_lb.main.arn_suffix
        TargetGroup  = each.value.arn_suffix
      }
    }
  }
  alarm_actions = local.alarm_actions
  ok_actions    = local.alarm_actions
}

# Recommendations served by a fallback path (no model loaded, candidate failure, cold start beyond the
# usual share) from the API's own Prometheus counters, published by the metrics sidecar.
resource "aws_cloudwatch_metric_alarm" "api_fallback_rate" {
  alarm_name          = "${local.name}-api-fallback-rate"
  alarm_description   = "More than ${var.fallback_rate_threshold_pct}% of recommendations fell back for 15 minutes (runbook: fallback rate)"
  evaluation_periods  = 3
  datapoints_to_alarm = 3
  threshold           = var.fallback_rate_threshold_pct
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"

  metric_query {
    id          = "rate"
    expression  = "100 * FILL(fallbacks, 0) / IF(served > 0, served, 1)"
    label       = "fallback %"
    return_data = true
  }
  metric_query {
    id = "fallbacks"
    metric {
      namespace   = "newsrec/api"
      metric_name = "newsrec_fallbacks_total"
      period      = 300
      stat        = "Sum"
    }
  }
  metric_query {
    id = "served"
    metric {
      namespace   = "newsrec/api"
      metric_name = "newsrec_variant_requests_total"
      period      = 300
      stat        = "Sum"
    }
  }
  alarm_actions = local.alarm_actions
  ok_actions    = local.alarm_actions
}

# Drives the latency step-scaling policy: the worse of the two target groups, so it follows traffic
# across blue/green swaps.
resource "aws_cloudwatch_metric_alarm" "api_latency_scale_out" {
  alarm_name          = "${local.name}-api-latency-scale-out"
  alarm_description   = "Scale the API out: p99 latency above 80% of its budget"
  evaluation_periods  = 2
  threshold           = 0.8 * var.api_p99_latency_threshold_s
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"

  metric_query {
    id          = "worst"
    expression  = "MAX([blue, green])"
    label       = "API p99 latency"
    return_data = true
  }
  dynamic "metric_query" {
    for_each = aws_lb_target_group.api
    content {
      id = metric_query.key
      metric {
        namespace   = "AWS/ApplicationELB"
        metric_name = "TargetResponseTime"
        period      = 60
        stat        = "p99"
        dimensions = {
          LoadBalancer = aws_lb.main.arn_suffix
          TargetGroup  = metric_query.value.arn_suffix
        }
      }
    }
  }
  alarm_actions = [aws_appautoscaling_policy.api_latency.arn]
}

# --- pipelines -------------------------------------------------------------------------------------------

resource "aws_cloudwatch_metric_alarm" "dag_failed" {
  for_each            = local.dag_ids
  alarm_name          = "${local.name}-dag-failed-${each.key}"
  alarm_description   = "A ${each.key} DAG run failed (runbook: DAG failures)"
  namespace           = "AmazonMWAA"
  metric_name         = "DAGDurationFailed"
  statistic           = "SampleCount"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  dimensions = {
    Environment = aws_mwaa_environment.main.name
    DAG         = each.key
  }
  alarm_actions = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "mlflow_down" {
  alarm_name          = "${local.name}-mlflow-down"
  alarm_description   = "No MLflow task running: the API cannot load new models, training cannot register (runbook: MLflow)"
  namespace           = "ECS/ContainerInsights"
  metric_name         = "RunningTaskCount"
  statistic           = "Minimum"
  period              = 60
  evaluation_periods  = 3
  threshold           = 1
  comparison_operator = "LessThanThreshold"
  treat_missing_data  = "breaching"
  dimensions = {
    ClusterName = aws_ecs_cluster.main.name
    ServiceName = aws_ecs_service.mlflow.name
  }
  alarm_actions = local.alarm_actions
  ok_actions    = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "rds_storage" {
  alarm_name          = "${local.name}-rds-free-storage"
  alarm_description   = "MLflow database has under 5 GB free (runbook: MLflow)"
  namespace           = "AWS/RDS"
  metric_name         = "FreeStorageSpace"
  statistic           = "Minimum"
  period              = 300
  evaluation_periods  = 2
  threshold           = 5 * 1024 * 1024 * 1024
  comparison_operator = "LessThanThreshold"
  dimensions          = { DBInstanceIdentifier = aws_db_instance.mlflow.identifier }
  alarm_actions       = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "redis_memory" {
  alarm_name          = "${local.name}-redis-memory"
  alarm_description   = "Online user state uses over 80% of Redis memory (runbook: Redis)"
  namespace           = "AWS/ElastiCache"
  metric_name         = "DatabaseMemoryUsagePercentage"
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 2
  threshold           = 80
  comparison_operator = "GreaterThanThreshold"
  dimensions          = { ReplicationGroupId = module.state_redis.id }
  alarm_actions       = local.alarm_actions
}

# The users' state never evicts: a full store makes refresh_index fail (the API keeps the version it has), and a
# new version needs room beside the one served, hence the lower threshold.
resource "aws_cloudwatch_metric_alarm" "users_redis_memory" {
  alarm_name          = "${local.name}-users-redis-memory"
  alarm_description   = "Users' state uses over 60% of its Redis memory: the next version may not fit (runbook: Redis)"
  namespace           = "AWS/ElastiCache"
  metric_name         = "DatabaseMemoryUsagePercentage"
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 60
  comparison_operator = "GreaterThanThreshold"
  dimensions          = { ReplicationGroupId = module.users_redis.id }
  alarm_actions       = local.alarm_actions
}

# --- one dashboard: traffic, latency, errors, fallbacks, scaling, pipelines ------------------------------

resource "aws_cloudwatch_dashboard" "main" {
  dashboard_name = local.name
  dashboard_body = jsonencode({
    widgets = [
      {
        type = "metric", x = 0, y = 0, width = 12, height = 6
        properties = {
          title  = "API p50 / p99 latency (s)"
          region = var.region
          stat   = "p99"
          metrics = flatten([for name, tg in aws_lb_target_group.api : [
            ["AWS/ApplicationELB", "TargetResponseTime", "LoadBalancer", aws_lb.main.arn_suffix, "TargetGroup", tg.arn_suffix, { stat = "p50", label = "${name} p50" }],
            ["AWS/ApplicationELB", "TargetResponseTime", "LoadBalancer", aws_lb.main.arn_suffix, "TargetGroup", tg.arn_suffix, { stat = "p99", label = "${name} p99" }],
          ]])
          annotations = { horizontal = [{ label = "p99 budget", value = var.api_p99_latency_threshold_s }] }
        }
      },
      {
        type = "metric", x = 12, y = 0, width = 12, height = 6
        properties = {
          title  = "Requests and 5xx per minute"
          region = var.region
          stat   = "Sum"
          period = 60
          metrics = [
            ["AWS/ApplicationELB", "RequestCount", "LoadBalancer", aws_lb.main.arn_suffix],
            ["AWS/ApplicationELB", "HTTPCode_Target_5XX_Count", "LoadBalancer", aws_lb.main.arn_suffix],
            ["AWS/ApplicationELB", "HTTPCode_Target_4XX_Count", "LoadBalancer", aws_lb.main.arn_suffix],
          ]
        }
      },
      {
        type = "metric", x = 0, y = 6, width = 12, height = 6
        properties = {
          title  = "Recommendations by A/B variant and fallbacks"
          region = var.region
          stat   = "Sum"
          period = 300
          metrics = [
            ["newsrec/api", "newsrec_variant_requests_total"],
            ["newsrec/api", "newsrec_fallbacks_total"],
          ]
        }
      },
      {
        type = "metric", x = 12, y = 6, width = 12, height = 6
        properties = {
          title  = "API tasks and CPU"
          region = var.region
          metrics = [
            ["ECS/ContainerInsights", "RunningTaskCount", "ClusterName", aws_ecs_cluster.main.name, "ServiceName", aws_ecs_service.api.name],
            ["AWS/ECS", "CPUUtilization", "ClusterName", aws_ecs_cluster.main.name, "ServiceName", aws_ecs_service.api.name, { yAxis = "right" }],
          ]
        }
      },
      {
        type = "alarm", x = 0, y = 12, width = 24, height = 4
        properties = {
          title = "Alarms"
          alarms = concat(
            [for a in aws_cloudwatch_metric_alarm.api_p99_latency : a.arn],
            [for a in aws_cloudwatch_metric_alarm.api_5xx_rate : a.arn],
            [aws_cloudwatch_metric_alarm.api_fallback_rate.arn, aws_cloudwatch_metric_alarm.mlflow_down.arn],
            [for a in aws_cloudwatch_metric_alarm.dag_failed : a.arn],
          )
        }
      },
      {
        type = "metric", x = 0, y = 16, width = 24, height = 6
        properties = {
          title  = "DAG runs failed / succeeded"
          region = var.region
          stat   = "SampleCount"
          period = 3600
          metrics = flatten([for dag in local.dag_ids : [
            ["AmazonMWAA", "DAGDurationFailed", "Environment", aws_mwaa_environment.main.name, "DAG", dag],
            ["AmazonMWAA", "DAGDurationSuccess", "Environment", aws_mwaa_environment.main.name, "DAG", dag],
          ]])
        }
      },
    ]
  })
}
