// Key Vault in RBAC mode holding the iTwin secrets. The app reads them through Key Vault references
// resolved with its user-assigned identity (Key Vault Secrets User, granted in role-assignments.bicep).
// Secret names are fixed here; rotating a secret means adding a new version (see docs/deployment.md).
// With vnetEnabled, public network access is off and the app reads the vault through a private endpoint.

@description('Name of the key vault (3-24 characters, globally unique).')
@minLength(3)
@maxLength(24)
param name string

@description('Region of the key vault.')
param location string

@description('Tags for the key vault.')
param tags object = {}

@description('Days a deleted vault or secret stays recoverable.')
@minValue(7)
@maxValue(90)
param softDeleteRetentionInDays int = 90

@description('True: no public network access; the app comes in through a private endpoint (network.bicep).')
param vnetEnabled bool = false

@secure()
@description('Client secret of the iTwin service application.')
param itwinClientSecret string

@secure()
@description('Secret the iTwin webhook signs its deliveries with.')
param itwinWebhookSecret string

@secure()
@description('Secret the webhook signed with before the current one (equal to it outside a change of secret).')
param itwinWebhookSecretPrevious string

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    // checkov:skip=CKV_AZURE_189: [vnetEnabled=false] Key Vault references of a Flex Consumption app without virtual network integration are resolved over the vault's public endpoint; access is by Entra identity and RBAC only (Key Vault Secrets User for the app's identity). vnetEnabled=true turns it off.
    // checkov:skip=CKV_AZURE_109: [vnetEnabled=false] Same reason as CKV_AZURE_189: a default-deny firewall would make the app's Key Vault references unresolvable without a virtual network. vnetEnabled=true denies by default.
    publicNetworkAccess: vnetEnabled ? 'Disabled' : 'Enabled'
    networkAcls: {
      defaultAction: vnetEnabled ? 'Deny' : 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource clientSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'itwin-client-secret'
  properties: {
    // checkov:skip=CKV_AZURE_41: Key Vault refuses to return an expired secret (SecretExpired), so an expiry date invented at deploy time would take the app down on that date; the credential's real lifetime is set where it is issued (the iTwin service application), and rotation adds a new version.
    value: itwinClientSecret
    contentType: 'text/plain'
    attributes: {
      enabled: true
    }
  }
}

resource webhookSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'itwin-webhook-secret'
  properties: {
    // checkov:skip=CKV_AZURE_41: Key Vault refuses to return an expired secret (SecretExpired), so a deploy-time expiry would make every webhook delivery fail on that date; the secret is rotated together with the webhook registration by adding a new version.
    value: itwinWebhookSecret
    contentType: 'text/plain'
    attributes: {
      enabled: true
    }
  }
}

resource webhookSecretPrevious 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'itwin-webhook-secret-previous'
  properties: {
    // checkov:skip=CKV_AZURE_41: Same reason as itwin-webhook-secret: an expiry would make the app refuse deliveries on that date; `python -m ops webhook rotate-secret` replaces it.
    value: itwinWebhookSecretPrevious
    contentType: 'text/plain'
    attributes: {
      enabled: true
    }
  }
}

output id string = vault.id
output name string = vault.name
output vaultUri string = vault.properties.vaultUri
// Versionless URIs: a Key Vault reference built on them follows the latest version of the secret.
output clientCredentialUri string = clientSecret.properties.secretUri
output webhookSigningUri string = webhookSecret.properties.secretUri
output previousWebhookSigningUri string = webhookSecretPrevious.properties.secretUri
