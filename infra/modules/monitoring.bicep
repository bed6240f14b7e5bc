// Log Analytics workspace and the workspace-based Application Insights resource the app exports its
// OpenTelemetry traces, logs and metrics to. Local (instrumentation-key) authentication is off on both, so
// only a Microsoft Entra identity holding Monitoring Metrics Publisher can ingest.

@description('Name of the Log Analytics workspace.')
param logAnalyticsName string

@description('Name of the Application Insights resource.')
param applicationInsightsName string

@description('Region of both resources.')
param location string

@description('Tags for both resources.')
param tags object = {}

@description('Days the workspace keeps data.')
@minValue(30)
@maxValue(730)
param retentionInDays int = 30

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: logAnalyticsName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionInDays
    features: {
      disableLocalAuth: true
    }
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: applicationInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
    IngestionMode: 'LogAnalytics'
    DisableLocalAuth: true
    // Ingestion and query stay on the public endpoints, also with vnetEnabled (the app reaches them through the
    // network's NAT gateway; an Azure Monitor private link scope is not part of this template). With local auth
    // disabled, every ingestion call needs an Entra token.
    publicNetworkAccessForIngestion: 'Enabled'
    publicNetworkAccessForQuery: 'Enabled'
  }
}

output workspaceId string = workspace.id
output applicationInsightsName string = appInsights.name
// Not a credential: with DisableLocalAuth the instrumentation key in it cannot ingest anything by itself.
output connectionString string = appInsights.properties.ConnectionString
