// Alerts on what the app records, and the action group that e-mails them. Three log search alerts run KQL over
// the app's Application Insights (the same customMetrics the workbook shows; tests/infra checks every metric and
// dimension against the code); one metric alert watches the storage account's queue message count. Each
// description says what the alert means and what to do; docs/deployment.md (section Alerts) says more.
//
// With alertEmail empty there is no action group: the alerts still fire and show in Azure Monitor, Alerts.

@description('Prefix of the alert rule names (the deployment\'s resource token).')
param namePrefix string

@description('Region of the log search alert rules (the Application Insights region).')
param location string

@description('Tags for every alert resource.')
param tags object = {}

@description('Name of the Application Insights resource the log search alerts query.')
param applicationInsightsName string

@description('Name of the storage account holding itwin-commands and itwin-commands-poison.')
param storageAccountName string

@description('E-mail address the alerts are sent to; empty: no action group, nobody is notified.')
param alertEmail string = ''

// The thresholds, in one place: a 401 now and then is a token that expired (the client refreshes and repeats it),
// and a token request may fail once in a while and be rescheduled; a burst of either is not normal.
var credentialErrorsThreshold = 5
var tokenFailuresThreshold = 3

var deadLetterQuery = '''
customMetrics
| where name == "itwin.commands"
| where tostring(customDimensions["outcome"]) == "dead_lettered"
| extend errorType = tostring(customDimensions["error.type"])
| summarize deadLetters = sum(valueSum) by errorType
'''

var credentialErrorsQuery = '''
customMetrics
| where name == "itwin.api.client_errors"
| extend status = toint(customDimensions["http.response.status_code"]),
         errorType = tostring(customDimensions["error.type"])
| where status in (401, 403)
| summarize responses = sum(valueSum) by errorType
'''

var tokenFailuresQuery = '''
customMetrics
| where name == "itwin.token.failures"
| extend errorType = tostring(customDimensions["error.type"])
| summarize failures = sum(valueSum) by errorType
'''

var actionGroups = empty(alertEmail) ? [] : [actionGroup.id]

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' existing = {
  parent: storage
  name: 'default'
}

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (!empty(alertEmail)) {
  name: 'ag-${namePrefix}'
  location: 'Global'
  tags: tags
  properties: {
    groupShortName: 'itwin-ops'
    enabled: true
    emailReceivers: [
      {
        name: 'operator'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

resource deadLetters 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'alert-${namePrefix}-dead-letters'
  location: location
  tags: tags
  properties: {
    displayName: 'iTwin commands dead-lettered'
    description: 'At least one command was dead-lettered in the last 15 minutes (dimension errorType: the poison envelope\'s error code). Nothing retries it. List them with `python -m ops poison list`, fix the cause (docs/deployment.md, Alerts, explains each code), then send them again with `python -m ops poison replay`. For CreateOutcomeUnknown, first check whether the job exists: it may have been created.'
    severity: 2
    enabled: true
    scopes: [
      appInsights.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [
        {
          query: deadLetterQuery
          timeAggregation: 'Total'
          metricMeasureColumn: 'deadLetters'
          dimensions: [
            {
              name: 'errorType'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: actionGroups
    }
  }
}

resource credentialErrors 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'alert-${namePrefix}-credentials'
  location: location
  tags: tags
  properties: {
    displayName: 'iTwin Platform refuses the app (401/403)'
    description: 'At least 5 answers 401 or 403 from the iTwin Platform in 15 minutes: the credentials or the iTwin membership broke. 403 InsufficientPermissions: the service application\'s user ({client id}@apps.imsoidc.bentley.com) is no longer a member of the iTwin, or lost a role. 401 after a fresh token: the client secret or the scope is wrong. The affected commands are dead-lettered: fix the access (docs/deployment.md, Alerts), then `python -m ops poison replay`.'
    severity: 1
    enabled: true
    scopes: [
      appInsights.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [
        {
          query: credentialErrorsQuery
          timeAggregation: 'Total'
          metricMeasureColumn: 'responses'
          dimensions: [
            {
              name: 'errorType'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          operator: 'GreaterThanOrEqual'
          threshold: credentialErrorsThreshold
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: actionGroups
    }
  }
}

resource tokenFailures 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'alert-${namePrefix}-token-service'
  location: location
  tags: tags
  properties: {
    displayName: 'IMS token service failing'
    description: 'At least 3 service token requests failed in 15 minutes (dimension errorType). TokenServiceUnavailable: IMS is unreachable or failing; commands are rescheduled and go through once it answers, unless they reach ITWIN_MAX_ATTEMPTS. invalid_client, unauthorized_client or invalid_scope: the client id, client secret (Key Vault secret itwin-client-secret) or scope is wrong or expired; every command is dead-lettered until it is fixed. Rotate the secret as docs/deployment.md describes, then `python -m ops poison replay`.'
    severity: 1
    enabled: true
    scopes: [
      appInsights.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [
        {
          query: tokenFailuresQuery
          timeAggregation: 'Total'
          metricMeasureColumn: 'failures'
          dimensions: [
            {
              name: 'errorType'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          operator: 'GreaterThanOrEqual'
          threshold: tokenFailuresThreshold
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: actionGroups
    }
  }
}

// Azure publishes queue message counts once an hour, for the whole account (no per-queue dimension). The account
// holds only itwin-commands, which the worker empties within minutes, and itwin-commands-poison.
resource queueBacklog 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: 'alert-${namePrefix}-queue-backlog'
  location: 'global'
  tags: tags
  properties: {
    description: 'Messages were waiting in the storage account\'s queues at Azure\'s hourly count: almost always dead letters in itwin-commands-poison that nobody has dealt with (the count covers itwin-commands too; a backlog there means the worker is not keeping up or not running). Look with `python -m ops poison list`, fix the cause (docs/deployment.md, Alerts), then `python -m ops poison replay`; check the app\'s health and the workbook when itwin-commands is the one that is full. Dead letters wait until replayed or purged (`python -m ops poison purge`).'
    severity: 3
    enabled: true
    scopes: [
      queueService.id
    ]
    evaluationFrequency: 'PT1H'
    windowSize: 'PT1H'
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'messages-waiting'
          metricNamespace: 'Microsoft.Storage/storageAccounts/queueServices'
          metricName: 'QueueMessageCount'
          timeAggregation: 'Average'
          operator: 'GreaterThan'
          threshold: 0
        }
      ]
    }
    autoMitigate: true
    actions: [
      for id in actionGroups: {
        actionGroupId: id
      }
    ]
  }
}

output actionGroupDeployed bool = !empty(alertEmail)
