// The operators' workbook: one Azure Monitor workbook over the app's Application Insights, its panels read from
// infra/workbook.json (edited and reviewed as a file). That file names its resource with a placeholder, replaced
// here by the deployed Application Insights resource id. In the portal: the Application Insights resource,
// Workbooks, or Monitor, Workbooks.

@description('Region of the workbook.')
param location string

@description('Tags for the workbook.')
param tags object = {}

@description('Name of the Application Insights resource the workbook queries.')
param applicationInsightsName string

@description('Name shown in the portal.')
param displayName string = 'iTwin event sync: operations'

// The placeholder infra/workbook.json uses wherever the Application Insights resource id belongs.
var applicationInsightsPlaceholder = '__APPLICATION_INSIGHTS_ID__'

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  // A workbook's name must be a GUID; this one is stable across deployments of the same environment.
  name: guid(resourceGroup().id, applicationInsightsName, 'itwin-operations-workbook')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: displayName
    category: 'workbook'
    sourceId: appInsights.id
    serializedData: replace(loadTextContent('../workbook.json'), applicationInsightsPlaceholder, appInsights.id)
  }
}

output id string = workbook.id
output name string = workbook.name
