"""Small helpers shared across vggfeat: files, devices."""
