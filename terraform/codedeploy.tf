# API releases are canaries: CodeDeploy starts the new task set on the idle target group, sends it 10% of
# production traffic for 5 minutes, then the rest; any API alarm going off during that window (latency,
# 5xx, fallback rate) stops the deployment and shifts traffic back to the old task set automatically.
resource "aws_codedeploy_app" "api" {
  name             = "${local.name}-api"
  compute_platform = "ECS"
}

resource "aws_codedeploy_deployment_group" "api" {
  app_name               = aws_codedeploy_app.api.name
  deployment_group_name  = "api"
  service_role_arn       = aws_iam_role.codedeploy.arn
  deployment_config_name = "CodeDeployDefault.ECSCanary10Percent5Minutes"

  deployment_style {
    deployment_type   = "BLUE_GREEN"
    deployment_option = "WITH_TRAFFIC_CONTROL"
  }

  blue_green_deployment_config {
    deployment_ready_option {
      action_on_timeout = "CONTINUE_DEPLOYMENT"
    }
    terminate_blue_instances_on_deployment_success {
      action                           = "TERMINATE"
      termination_wait_time_in_minutes = 15
    }
  }

  ecs_service {
    cluster_name = aws_ecs_cluster.main.name
    service_name = aws_ecs_service.api.name
  }

  load_balancer_info {
    target_group_pair_info {
      prod_traffic_route {
        listener_arns = [aws_lb_listener.https.arn]
      }
      test_traffic_route {
        listener_arns = [aws_lb_listener.test.arn]
      }
      target_group {
        name = aws_lb_target_group.api["blue"].name
      }
      target_group {
        name = aws_lb_target_group.api["green"].name
      }
    }
  }

  auto_rollback_configuration {
    enabled = true
    events  = ["DEPLOYMENT_FAILURE", "DEPLOYMENT_STOP_ON_ALARM"]
  }

  alarm_configuration {
    enabled = true
    alarms = concat(
      [for a in aws_cloudwatch_metric_alarm.api_p99_latency : a.alarm_name],
      [for a in aws_cloudwatch_metric_alarm.api_5xx_rate : a.alarm_name],
      [aws_cloudwatch_metric_alarm.api_fallback_rate.alarm_name],
    )
  }
}
